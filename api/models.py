"""Request and response models of the online feature API (they make its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from api.features import MAX_BATCH
from api.limits import MAX_FEATURE_NAME, MAX_FEATURES
from streamflow import contract, schema

CONTRACT_ERROR = "contract"
"""The pydantic error type of a value that breaks the registry's contract (api.errors shows its message)."""


def user_id(value: str) -> str:
    """The id if it keeps the registry's contract; else a validation error with the contract's reason."""
    try:
        return contract.check(schema.KEY_COLUMN, value)
    except contract.Violation as exc:
        raise PydanticCustomError(
            CONTRACT_ERROR, "{message}", {"message": str(exc), "field": exc.field, "rule": exc.reason}
        ) from None


UserId = Annotated[
    str,
    AfterValidator(user_id),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": contract.arrow_regex(contract.USER_ID),
            "maxLength": contract.USER_ID.max_length,
            "examples": ["7590-VHVEG"],
        }
    ),
]
"""A user id, checked by the registry's contract (four digits, a dash, five capital letters)."""

FeatureValue = bool | int | float | str | None


class ViewFeatures(BaseModel):
    """The features of one feature view for one user, with how fresh they are."""

    found: bool = Field(description="Whether the online store has a row of this view for the user.")
    event_timestamp: datetime | None = Field(
        description="Event time of the values (the snapshot's as_of or the streamed event's time), UTC; "
        "null when the view has no row for the user."
    )
    age_seconds: float | None = Field(
        description="Seconds between event_timestamp and the time of the answer (how stale the values are)."
    )
    features: dict[str, FeatureValue] = Field(
        description="Feature name -> value (dates as YYYY-MM-DD); empty when the view has no row "
        "for the user. "
        "A null value is a value that is unknown in the data (e.g. plan_stream_tv without internet service)."
    )


class UserFeatures(BaseModel):
    """Every requested feature of one user, grouped by feature view."""

    user_id: str
    found: bool = Field(
        description="False when the online store has no row of any requested view for the user."
    )
    views: dict[str, ViewFeatures] = Field(
        description="Feature view -> its features; empty when the user is not found."
    )


class FeaturesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[UserId] = Field(
        max_length=MAX_BATCH,
        description=f"Users to look up, at most {MAX_BATCH}; answers come back in this order.",
        examples=[["7590-VHVEG", "5575-GNVDE"]],
    )
    features: list[Annotated[str, StringConstraints(max_length=MAX_FEATURE_NAME)]] | None = Field(
        default=None,
        max_length=MAX_FEATURES,
        description="Features to return as view:feature (e.g. subs_profile_fv:contract_type); default: "
        f"every feature of the feature service {schema.FEATURE_SERVICE}.",
    )


class BatchFeatures(BaseModel):
    results: list[UserFeatures] = Field(description="One entry per requested id, in request order.")
    found: int = Field(description="How many entries were found.")
    not_found: int = Field(description="How many entries were not found.")


class ErrorResponse(BaseModel):
    """Every error of the API: a stable code and a readable message (never internals)."""

    error: str = Field(description="Machine-readable code, e.g. not_found, invalid_request, unavailable.")
    detail: str = Field(description="What went wrong, for a human.")


class Health(BaseModel):
    status: str = "ok"


class CheckResult(BaseModel):
    ok: bool
    detail: str | None = None
    seconds: float


class Readiness(BaseModel):
    status: str = Field(description="ready or unavailable")
    checks: dict[str, CheckResult] = Field(description="postgres and feast_registry")
    failing: list[str] = Field(default_factory=list, description="Names of the failing checks.")


class ModelRef(BaseModel):
    name: str = Field(description="Registered model name in MLflow's registry.")
    version: str = Field(description="The version that scored (the one the alias champion named).")


class Prediction(BaseModel):
    """One user's churn probability, with the model that gave it and the features it read."""

    user_id: str
    churn_probability: float | None = Field(
        description="Probability that the user churns; null when a feature is missing (see missing_features)."
    )
    missing_features: list[str] = Field(
        description="view:feature references the online store lacks for the user; the user is scored only "
        "when this is empty (no value is ever guessed)."
    )
    model: ModelRef
    views: dict[str, ViewFeatures] = Field(
        description="The model's feature views: each one's values, event time and age, as /features "
        "gives them."
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[UserId] = Field(
        max_length=MAX_BATCH,
        description=f"Users to score, at most {MAX_BATCH}; answers come back in this order.",
        examples=[["7590-VHVEG", "5575-GNVDE"]],
    )


class BatchPrediction(BaseModel):
    results: list[Prediction] = Field(description="One entry per requested id, in request order.")
    scored: int = Field(description="How many entries have a churn probability.")
    not_scored: int = Field(description="How many entries lack a feature (or the user altogether).")


class ScoreBucket(BaseModel):
    low: float = Field(description="Lower bound of the bucket (exclusive, but 0 for the first).")
    high: float = Field(description="Upper bound of the bucket (inclusive).")
    count: int = Field(description="Scores answered in this bucket since the process started.")


class ScoreDistribution(BaseModel):
    """The churn probabilities this API process has answered, by decile (what the dashboard plots)."""

    model: ModelRef | None = Field(description="The model serving now; null while none is loaded.")
    total: int = Field(description="Scores answered since the process started.")
    buckets: list[ScoreBucket]
