"""The Cloud Controller (mallee-clc): the EC2 API users drive, and the cloud's records.

Being built (issue 7): so far the EC2 wire layer (``wire``, driven by botocore's model)
and the check of who signed a request (``auth``).
"""
