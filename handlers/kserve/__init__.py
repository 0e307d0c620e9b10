"""The request core (handlers/core/) on KServe's own model server: the SDK's Model, served by its
ModelServer, from the same archive TorchServe serves (`python -m handlers.kserve --help`)."""
