"""The resume snapshot of a job: its record plus the content of exactly the events up to ``seq``.

Built here for the owner's actor (in memory) and for a replica that rebuilds it from the log
(``service.server.resume``): one shape, one place.
"""

from __future__ import annotations

from schemas.api import ResumeSnapshot
from schemas.content.aggregator import ContentAggregator
from schemas.job import JobRecord


def snapshot_of(rec: JobRecord, agg: ContentAggregator, *, seq: int, index: int) -> ResumeSnapshot:
    """The snapshot of ``rec`` whose content ``agg`` holds the events up to ``seq``."""
    return ResumeSnapshot(
        run_steps=agg.run_steps(),
        aggregated_content=agg.content_filtered(),
        status=rec.status.value,
        created_at=rec.created_at,
        seq=seq,
        index=index,
        user_message=rec.user_message,
        response_message_id=rec.response_message_id,
        conversation_id=rec.conversation_id,
        sender=rec.sender,
    )
