"""A billing task written the unsafe way, as a scheduler re-runs it: from its
first line, on every retry. It charges (no idempotency key from the caller),
then fails while "recording" the charge, as a database timeout would.

argv: gateway_url vault_key customer amount_cents
"""
import sys

import stripe

url, vault_key, customer, amount = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = stripe.StripeClient(vault_key, base_addresses={"api": f"{url}/stripe"}, max_network_retries=0)
charge = client.v1.charges.create(params={"amount": amount, "currency": "usd", "customer": customer,
                                          "description": "Subscription 2026-06"})
print(charge.id)
raise SystemExit("database write timed out after the charge")  # the task fails past the charge
