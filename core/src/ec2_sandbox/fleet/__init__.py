"""Fleets: many sessions over many instances, on AWS's own machinery.

Members come from EC2 Auto Scaling, EC2 tags or a list of instance ids, and SSM says which of them can take
commands (:mod:`.discovery`); session placements and per-instance slot leases live in a DynamoDB table,
written only with conditional writes (:mod:`.store`); the ``fleet`` transport routes each runner request to
the member that holds its session or task, through an ``ssm`` transport per member (:mod:`.transport`).
There is no scheduler or registry server of our own: many clients share a fleet through the table alone.
"""
