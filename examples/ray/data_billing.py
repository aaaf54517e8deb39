"""Ray gap 1: ``ray.data`` ``map_batches`` bills a dataset of usage rows with
an actor; the actor dies midway through a batch, Ray Data restarts it and
runs the whole batch again, re-charging the rows that were already charged.

Each row's idempotency key is derived from the row (its id, customer, amount
and billing period), which is the same on every attempt, so the gateway
answers the re-run's calls for the already-charged rows with the stored
charges: one charge per row. The job's vault key is capped at the dataset's
total plus 10 %.

    KEYBRAKE_URL=http://127.0.0.1:10000 KEYBRAKE_ADMIN_KEY=... python examples/ray/data_billing.py
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Optional

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine

import ray  # noqa: E402

import keybrake  # noqa: E402

CONTEXT = "ray-data-billing"


class ChargeRows:
    """The ``map_batches`` callable: one instance per actor, one Stripe client per actor."""

    def __init__(self, gateway_url: str, vault_key: str, billing_period: str,
                 crash_in_batch_with_row: Optional[str] = None, crash_after_rows: int = 0,
                 crash_marker: Optional[str] = None) -> None:
        self.client = keybrake.stripe_client(vault_key, url=gateway_url)
        self.billing_period = billing_period
        self.crash_row = crash_in_batch_with_row
        self.crash_after = crash_after_rows
        self.crash_marker = crash_marker

    def __call__(self, batch: dict) -> dict:
        charge_ids = []
        crash_here = self.crash_row is not None and self.crash_row in list(batch["row_id"])
        for n, (row_id, customer, amount) in enumerate(zip(batch["row_id"], batch["customer"], batch["amount_cents"]),
                                                       start=1):
            amount = int(amount)
            idempotency_key = keybrake.billing_idempotency_key(str(row_id), str(customer), amount,
                                                               self.billing_period, context=CONTEXT)
            charge = self.client.v1.charges.create(
                params={"amount": amount, "currency": "usd", "customer": str(customer),
                        "description": f"Usage {self.billing_period}",
                        "metadata": {"row_id": str(row_id), "billing_period": self.billing_period}},
                options={"idempotency_key": idempotency_key})
            charge_ids.append(charge.id)
            if crash_here and n == self.crash_after:
                self._crash_once()
        return {**batch, "charge_id": charge_ids}

    def _crash_once(self) -> None:
        """Fault injection: the first time, the actor process dies here (as an OOM kill would)."""
        assert self.crash_marker is not None
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)


def usage_rows(run: str, n: int = 24) -> list[dict]:
    return [{"row_id": f"row_{run}_{i:03d}", "customer": f"cus_{run}_{i:03d}", "amount_cents": 500 + 25 * i}
            for i in range(n)]


def bill_dataset(rows: list[dict], billing_period: str, run: str, *, blocks: int = 4, url: Optional[str] = None,
                 admin_key: Optional[str] = None, crash_in_batch_with_row: Optional[str] = None,
                 crash_after_rows: int = 0, crash_marker: Optional[str] = None) -> dict:
    """Bills every row with ``map_batches`` (one actor; a batch is a block of
    the dataset) and returns the rows with their charge ids."""
    kb = keybrake.Keybrake(url, admin_key)
    key = kb.issue_vault_key(f"ray-data-{run}", daily_usd_cap=keybrake.usd_cap(sum(r["amount_cents"] for r in rows)),
                             expires_in_seconds=3600)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    charged = ds.map_batches(
        ChargeRows,
        fn_constructor_kwargs={"gateway_url": kb.url, "vault_key": key.vault_key, "billing_period": billing_period,
                               "crash_in_batch_with_row": crash_in_batch_with_row,
                               "crash_after_rows": crash_after_rows, "crash_marker": crash_marker},
        batch_size=None,  # one batch per block: a crash re-runs the whole partition
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )
    return {"key_id": key.id, "rows": charged.take_all()}


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        run = uuid.uuid4().hex[:6]
        rows = usage_rows(run)
        marker = str(Path(tempfile.mkdtemp()) / "crashed")
        out = bill_dataset(rows, "2026-06", run, crash_in_batch_with_row=rows[8]["row_id"], crash_after_rows=3,
                           crash_marker=marker)
        print(f"{len(out['rows'])} rows billed, {len({r['charge_id'] for r in out['rows']})} distinct charges; "
              f"the actor died once mid-batch: {Path(marker).exists()}")
        replays = keybrake.audit(key_id=out["key_id"], decision="replayed")
        print(f"{len(replays)} re-run calls answered from the gateway's record")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
