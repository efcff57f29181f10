"""Locust scenarios of the register flows (`make load`).

dataset.py     the seeded data set (plan, JSON cache) and a generator of realistic receipts
locustfile.py  gRPC users: identify, purchase with accrual, purchase with redemption, refund,
               offline batch; every answer checked
__main__.py    `python -m loadtests.locust`: the stack, the data set, a bounded headless run,
               CSV and HTML reports under loadtests/reports/locust/
"""
