# The test files that need neither PostgreSQL nor Kafka (sourced by scripts/check.sh and
# scripts/other_pythons.sh). A file that starts needing a service leaves this list.
# shellcheck disable=SC2034 # used by the scripts that source it
UNIT_TESTS=(tests/test_api_batcher.py tests/test_chunked_validation.py tests/test_cli.py tests/test_consumer_frame.py
            tests/test_contract.py tests/test_contract_docs.py tests/test_event_batch.py tests/test_feast_settings.py
            tests/test_generator.py tests/test_install.py tests/test_lag_status.py tests/test_logs.py
            tests/test_producer_encoding.py tests/test_write_errors.py tests/test_api_limits.py)
