# The two commands of the README, and a few more.
.PHONY: demo test check docs services-up services-down bench install

demo:            ## run the main job end to end on this machine
	scripts/demo.sh

test:            ## run the whole test suite against real PostgreSQL and Kafka
	scripts/test.sh

check:           ## the fast loop: lint, types, docs build, unit tests (no services)
	scripts/check.sh

docs:            ## serve the documentation site on http://127.0.0.1:8001
	.venv/bin/mkdocs serve --dev-addr 127.0.0.1:8001

install:
	scripts/bootstrap.sh

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down
