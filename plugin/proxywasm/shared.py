"""Shared data (across all VMs of a plugin on one host) with compare-and-swap updates."""

from __future__ import annotations

from collections.abc import Callable

from . import hostcalls as hc


def get(key: str) -> tuple[bytes | None, int]:
    return hc.get_shared_data(key)


def set(key: str, value: bytes, cas: int = 0) -> None:
    hc.set_shared_data(key, value, cas)


def update(key: str, fn: Callable[[bytes | None], bytes], retries: int = 32) -> bytes:
    """Apply ``fn`` to the current value and store the result atomically (CAS loop).

    Envoy has no atomic create-if-absent: create the key (e.g. at configure time)
    before workers race to update it.
    """
    for _ in range(retries):
        value, cas = hc.get_shared_data(key)
        new = fn(value)
        try:
            hc.set_shared_data(key, new, cas)
            return new
        except hc.CasMismatch:
            continue
    raise hc.CasMismatch("proxy_set_shared_data", 8)


class SharedQueue:
    """A named queue; any VM may enqueue, the registering VM's root gets on_queue_ready."""

    def __init__(self, queue_id: int) -> None:
        self.id = queue_id

    @classmethod
    def register(cls, name: str) -> SharedQueue:
        return cls(hc.register_shared_queue(name))

    @classmethod
    def resolve(cls, vm_id: str, name: str) -> SharedQueue | None:
        qid = hc.resolve_shared_queue(vm_id, name)
        return None if qid is None else cls(qid)

    def enqueue(self, data: bytes) -> None:
        hc.enqueue_shared_queue(self.id, data)

    def dequeue(self) -> bytes | None:
        return hc.dequeue_shared_queue(self.id)
