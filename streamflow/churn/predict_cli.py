"""``streamflow predict USER...``: each user's churn probability from the online features, scored by
the champion (what ``GET /predict/{user_id}`` answers, without the API)."""

from __future__ import annotations

import json
import logging

from streamflow.errors import StreamflowError

log = logging.getLogger("streamflow.predict")


def main(argv: list[str] | None = None) -> int:
    from streamflow.online_features import lookup, user_ids_command

    try:
        args = user_ids_command(
            "streamflow predict",
            __doc__.splitlines()[0],
            "one JSON object: the model and each user's score",
            argv,
        )
        from streamflow.churn.scoring import Champion

        champion = Champion.load()
        rows = lookup(args.user_ids)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    from streamflow.churn import features

    scored = champion.score(args.user_ids, [{n: r.get(n) for n in features.NAMES} for r in rows])
    version = champion.version
    if args.json:
        doc = {
            "model": {"name": version.name, "version": version.version},
            "users": [
                {"user_id": s.user_id, "churn_probability": s.probability, "missing_features": s.missing}
                for s in scored
            ],
        }
        print(json.dumps(doc))
    else:
        print(f"model {version.name} version {version.version}")
        for s in scored:
            if s.probability is None:
                print(f"{s.user_id}: not scored, missing {', '.join(s.missing)}")
            else:
                print(f"{s.user_id}: churn probability {s.probability:.4f}")
    return 0 if all(s.probability is not None for s in scored) else 1
