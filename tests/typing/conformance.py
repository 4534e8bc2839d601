from commonware_runtime import deterministic, interfaces, production
from commonware_runtime.deterministic import network as sim_net, storage as sim_storage
from commonware_runtime.production import network as real_net, storage as real_storage


def det_context(c: deterministic.Context) -> interfaces.Context:
    return c


def prod_context(c: production.Context) -> interfaces.Context:
    return c


def sinks(a: sim_net.Sink, b: real_net.Sink) -> list[interfaces.Sink]:
    return [a, b]


def streams(a: sim_net.Stream, b: real_net.Stream) -> list[interfaces.Stream]:
    return [a, b]


def listeners(a: sim_net.Listener, b: real_net.Listener) -> list[interfaces.Listener]:
    return [a, b]


def blobs(a: sim_storage.Blob, b: real_storage.Blob) -> list[interfaces.Blob]:
    return [a, b]


def strategies(a: deterministic.Random, b: deterministic.PCT, c: deterministic.Swarm) -> list[interfaces.Strategy]:
    return [a, b, c]
