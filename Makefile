# The two commands of the README, and a few more.
.PHONY: demo test services-up services-down bench install

demo:            ## run the main job end to end on this machine
	scripts/demo.sh

test:            ## run the whole test suite against real PostgreSQL and Kafka
	scripts/test.sh

install:
	scripts/bootstrap.sh

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down
