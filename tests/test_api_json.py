"""The API's JSON bodies (api.feature_routes.user_body, batch_body): written by orjson straight
from the dataclasses of api.features, they must keep the shape of the response models."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

from api import models
from api.feature_routes import batch_body, user_body
from api.features import UserResult, ViewResult
from streamflow.timefmt import iso_utc


def test_the_dataclasses_have_the_fields_of_the_models_in_their_order():
    assert [f.name for f in dataclasses.fields(ViewResult)] == list(models.ViewFeatures.model_fields)
    assert [f.name for f in dataclasses.fields(UserResult)] == list(models.UserFeatures.model_fields)


def test_a_users_body_is_the_models_json_with_utc_times_written_as_iso_utc_writes_them():
    stamp = datetime(2024, 2, 29, 12, 30, 1, 500, tzinfo=timezone.utc)
    result = UserResult(
        "7590-VHVEG",
        True,
        {
            "subs_profile_fv": ViewResult(
                True, stamp, 12.5, {"contract_type": "Month-to-month", "tenure": 3}
            ),
            "support_agg_90d_fv": ViewResult(False, None, None, {}),
        },
    )
    parsed = json.loads(user_body(result))
    assert (
        parsed["views"]["subs_profile_fv"]["event_timestamp"]
        == iso_utc(stamp)
        == "2024-02-29T12:30:01.000500Z"
    )
    assert models.UserFeatures.model_validate(parsed).model_dump(
        mode="json"
    ) == models.UserFeatures.model_validate(dataclasses.asdict(result)).model_dump(mode="json")
    assert parsed == {
        "user_id": "7590-VHVEG",
        "found": True,
        "views": {
            "subs_profile_fv": {
                "found": True,
                "event_timestamp": "2024-02-29T12:30:01.000500Z",
                "age_seconds": 12.5,
                "features": {"contract_type": "Month-to-month", "tenure": 3},
            },
            "support_agg_90d_fv": {
                "found": False,
                "event_timestamp": None,
                "age_seconds": None,
                "features": {},
            },
        },
    }


def test_a_batch_body_counts_found_and_not_found():
    users = [UserResult("1111-AAAAA", True, {}), UserResult("0000-ZZZZZ", False, {})]
    body, found = batch_body(users)
    parsed = json.loads(body)
    assert found == 1 and (parsed["found"], parsed["not_found"]) == (1, 1)
    assert [u["user_id"] for u in models.BatchFeatures.model_validate(parsed).model_dump()["results"]] == [
        "1111-AAAAA",
        "0000-ZZZZZ",
    ]
