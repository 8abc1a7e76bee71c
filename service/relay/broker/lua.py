"""Redis scripts: each runs atomically, so the live feed and the history never disagree.

Keys of one room share the hash tag `{room}`: they stay on one slot should a shard ever
be a Redis Cluster node.
"""

from typing import Final

PUBLISH_DURABLE: Final = """
-- KEYS: 1 meta hash, 2 stream, 3 dedupe key
-- ARGV: 1 channel, 2 epoch if the room has none, 3 history size, 4 history TTL (s),
--       5 dedupe TTL (s), 6 header head, 7 header tail, 8 event head, 9 event tail
local dedupe_ttl = tonumber(ARGV[5])
if dedupe_ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    if not sep then
      -- Stored by PUBLISH_VOLATILE_ONCE ('-'): a pod that held the room volatile sent
      -- it (rolling update of RELAY_ROOMS). It went out once; it has no offset.
      return {1, false, false}
    end
    return {1, tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1)}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local message = ARGV[6] .. offset .. ',"epoch":"' .. epoch .. '"' .. ARGV[7]
  .. '\\n' .. ARGV[8] .. offset .. ARGV[9]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'm', message)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], message)
if dedupe_ttl > 0 then
  redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'EX', dedupe_ttl)
end
return {0, offset, epoch}
"""

PUBLISH_VOLATILE_ONCE: Final = """
-- KEYS: 1 dedupe key. ARGV: 1 channel, 2 message, 3 dedupe TTL (s)
if redis.call('SET', KEYS[1], '-', 'NX', 'EX', ARGV[3]) then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 0
end
return 1
"""

HISTORY: Final = """
-- KEYS: 1 meta hash, 2 stream. ARGV: 1 after offset (-1: none), 2 max entries,
--       3 epoch if the room has none, 4 TTL (s) of a room that never had an event
-- Read before writing: a full Redis (maxmemory, noeviction) refuses a script's first
-- write of new data (HSETNX), and joining a room that exists must keep working then.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3])
  epoch = ARGV[3]
end
local stored = redis.call('HGET', KEYS[1], 'offset')
if not stored then
  -- Joined, never published to: kept only briefly (the publish script sets the
  -- history TTL), so joins to many names leave no lasting keys. EXPIRE is no
  -- new data, so a full Redis runs it.
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local top = tonumber(stored or '0')
local after = tonumber(ARGV[1])
local entries = {}
if after >= 0 and after < top then
  entries = redis.call('XRANGE', KEYS[2], '(' .. after .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch, top, entries}
"""


def sharded(script: str) -> str:
    """The script for a Redis Cluster node: SPUBLISH instead of PUBLISH, so the event goes
    only to the subscribers of the node that owns the room's slot (a PUBLISH would be
    broadcast over the cluster bus to every node). The room's channel shares the `{room}`
    hash tag with its keys, so it is in the script's slot, as Redis requires."""
    sharded_script = script.replace("redis.call('PUBLISH', ", "redis.call('SPUBLISH', ")
    if sharded_script == script:
        raise ValueError("the script publishes nothing")
    return sharded_script
