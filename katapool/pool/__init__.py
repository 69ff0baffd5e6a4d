"""Pools of engine members: supervision (start, health, restart) and query routing."""

from katapool.config.policy import PoolPolicy
from katapool.pool.member import LocalMember, Member, MemberStartError
from katapool.pool.pool import Pool
from katapool.pool.router import Session

__all__ = ["LocalMember", "Member", "MemberStartError", "Pool", "PoolPolicy", "Session"]
