"""In-process fan-out: the embedded `Fanout` for a single relay process.

Every member is local, so membership is a dict per room and live delivery is
a direct call of the member's callback. Rooms are removed when their last
member leaves, so memory follows the members present, not the rooms ever
seen.
"""

from __future__ import annotations

from chat.envelope import PresenceKind
from server.backends.base import Fanout, Member, RoomFull

__all__ = ["MemoryFanout"]


class MemoryFanout(Fanout):
    """Rooms and live delivery for members connected to this process."""

    def __init__(self) -> None:
        self._rooms: dict[bytes, dict[bytes, Member]] = {}

    async def join(
        self, room_id: bytes, address: bytes, member: Member, max_members: int
    ) -> tuple[bytes, ...]:
        """See `Fanout.join`."""
        members = self._rooms.setdefault(room_id, {})

        # A newer connection with the same address replaces the older one;
        # the others see no change, so nothing is announced.
        previous = members.get(address)
        if previous is not None:
            members[address] = member
            previous.displaced(room_id)
            return tuple(other for other in members if other != address)

        if len(members) >= max_members:
            if not members:
                del self._rooms[room_id]
            raise RoomFull(f"room already has {len(members)} members present")

        for other in members.values():
            other.presence(room_id, PresenceKind.JOINED, address)
        present = tuple(members)
        members[address] = member
        return present

    async def leave(self, room_id: bytes, address: bytes, member: Member) -> None:
        """See `Fanout.leave`."""
        members = self._rooms.get(room_id)
        if members is None or members.get(address) is not member:
            return

        del members[address]
        if not members:
            del self._rooms[room_id]
            return
        for other in members.values():
            other.presence(room_id, PresenceKind.LEFT, address)

    async def send_to(self, room_id: bytes, recipient: bytes, frame: bytes) -> bool:
        """See `Fanout.send_to`."""
        members = self._rooms.get(room_id)
        member = None if members is None else members.get(recipient)
        if member is None:
            return False
        member.deliver(frame)
        return True

    async def send_room(self, room_id: bytes, sender: bytes, frame: bytes) -> int:
        """See `Fanout.send_room`."""
        members = self._rooms.get(room_id)
        if members is None:
            return 0
        count = 0
        for address, member in members.items():
            if address != sender:
                member.deliver(frame)
                count += 1
        return count

    async def is_online(self, room_id: bytes, address: bytes) -> bool:
        """See `Fanout.is_online`."""
        return address in self._rooms.get(room_id, ())

    def room_count(self) -> int:
        """See `Fanout.room_count`."""
        return len(self._rooms)

    async def check(self) -> None:
        """See `Fanout.check`: memory always answers."""

    async def close(self) -> None:
        """See `Fanout.close`."""
        self._rooms.clear()
