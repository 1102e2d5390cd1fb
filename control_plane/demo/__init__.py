"""`edgefabric demo`: the whole fabric on one machine, from an empty temporary dir to a rolled-back release.

`steps.py` is the story, `processes.py` the control plane and agent subprocesses, `models.py` the two
model versions, `inference.py` the calls to the agents' local OIP API, `report.py` what is printed and
`cli.py` the command.
"""
