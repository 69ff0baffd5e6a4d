"""Pools of engine members: supervision (start, health, restart) and query routing."""

from katapool.config.policy import PoolPolicy
from katapool.pool.member import LocalMember, Member, MemberStartError
from katapool.pool.pool import Pool
from katapool.pool.router import Session
from katapool.pool.view import MemberSnapshot, PoolCounters

__all__ = ["LocalMember", "Member", "MemberSnapshot", "MemberStartError", "Pool", "PoolCounters",
           "PoolPolicy", "Session"]
