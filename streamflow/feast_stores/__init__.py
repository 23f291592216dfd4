"""StreamFlow's own Feast store classes on PostgreSQL (named in feature_store.yaml)."""
