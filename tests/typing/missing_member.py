from commonware_runtime import interfaces


class HalfSink:
    async def send(self, data: bytes) -> None:
        pass


class NoRecv:
    def peek(self, max_n: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


async def use(sink: interfaces.Sink, stream: interfaces.Stream) -> None:
    await sink.send(b"x")


async def main() -> None:
    await use(HalfSink(), NoRecv())
