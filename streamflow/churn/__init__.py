"""The churn model: what it reads (:mod:`.features`), how it is trained and chosen (:mod:`.train`,
:mod:`.candidates`, :mod:`.metrics`), where it lives (:mod:`.registry`, MLflow on our PostgreSQL),
how it scores (:mod:`.scoring`) and how its inputs drift (:mod:`.drift`)."""
