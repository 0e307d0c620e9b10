"""Experiments on live traffic: a candidate model beside the primary in one archive, shadowing it
(the candidate sees a sample of live batches; only the primary answers) or splitting traffic with
it (a share of requests, assigned by a header, answered by the candidate), with the two answers
to the same request compared."""
