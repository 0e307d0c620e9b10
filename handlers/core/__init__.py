"""The request core, independent of any server: a batch of requests (body and headers each) in,
each request's answer (status, headers, body) out, with the engine, the settings, an experiment
and the monitoring inside it. TorchServe's handler (handlers/image_classifier.py) and the KServe
model server (handlers/kserve/) are thin adapters around it."""
