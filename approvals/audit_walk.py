"""The audit history's text search narrowed by other filters, on PostgreSQL: which side to read first.

PostgreSQL matches text with `ILIKE`, served by `pg_trgm` indexes on the arguments and the message
(migration 0016). Those indexes have no order: a common word's trigrams are a posting list of every
event that has them (`cancel`: 150,000 events, ~25-50 ms to read), whatever the page needs. Given
another filter too (an outcome, an agent…), the planner then either intersects that list with the
filter's index, or walks the primary key newest first hoping to meet 51 matches soon; for a
combination that few events meet (`cancel` among approvals: none) the walk reads the whole table.

So a common word with such a filter is read the other way round (`approvals.history`): the filter's
own (column, seq) index gives the candidates newest first, each is looked up by its primary key and
its text checked, and the page load stops after `AuditHistory.scan` candidates (its window). A word the
planner expects to be rare keeps the trigram indexes: its few matches are found in the whole history
at once. The planner's estimate comes from `EXPLAIN` of the text condition alone (planning only, no
rows read), remembered per text.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncConnection

# A text the planner expects in at most this many events is looked up in the trigram indexes first.
RARE_TEXT = 2_000
# Filters whose own (column, seq) index can walk a search's candidates newest first.
WALKED = ("tool", "agent", "outcome", "actor")
# How many texts' estimates are remembered.
REMEMBERED = 256

# The planner's estimate of a text search's matches (the condition `history.event_conditions` makes).
_ESTIMATE = sql_text(
    "EXPLAIN (FORMAT JSON) SELECT seq FROM audit_event"
    " WHERE arguments ILIKE :pattern ESCAPE '\\' OR message ILIKE :pattern ESCAPE '\\'"
)


class TextEstimates:
    """Whether the planner expects a text in more than `rare` events, per text (LRU); `rare` < 0: every text."""

    def __init__(self, rare: int = RARE_TEXT) -> None:
        self.rare = rare
        self._common: OrderedDict[str, bool] = OrderedDict()

    async def common(self, conn: AsyncConnection, pattern: str) -> bool:
        if self.rare < 0:
            return True  # every text walked (tests)
        known = self._common.get(pattern)
        if known is not None:
            self._common.move_to_end(pattern)
            return known
        plan = (await conn.execute(_ESTIMATE, {"pattern": pattern})).scalar_one()
        rows = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]["Plan Rows"]
        common = bool(rows > self.rare)
        self._common[pattern] = common
        if len(self._common) > REMEMBERED:
            self._common.popitem(last=False)
        return common
