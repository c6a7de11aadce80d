"""The Redis job store's atomic steps, as Lua scripts (redis_store.py registers them).

Each state change is one script, so it is atomic against every other server; the run
history's filters run here too, so only matching records cross the network.
"""

# KEYS: job, queued set, running set, events. ARGV: id, now, worker, state event.
CLAIM = """
if redis.call('hget', KEYS[1], 'state') ~= 'queued' then return 0 end
redis.call('hset', KEYS[1], 'state', 'running', 'started_at', ARGV[2], 'worker', ARGV[3])
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zadd', KEYS[3], ARGV[2], ARGV[1])
redis.call('rpush', KEYS[4], ARGV[4])
return 1
"""
# KEYS: job, queued set, running set, events. ARGV: id, expected state, state, now,
# expires_at, ttl seconds, error, status, headers, body, state event. The events expire
# with the record.
FINISH = """
if redis.call('hget', KEYS[1], 'state') ~= ARGV[2] then return 0 end
redis.call('hset', KEYS[1], 'state', ARGV[3], 'finished_at', ARGV[4], 'expires_at', ARGV[5],
  'error', ARGV[7], 'result_status', ARGV[8], 'result_headers', ARGV[9], 'body', ARGV[10])
redis.call('hdel', KEYS[1], 'request')
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('expire', KEYS[1], ARGV[6])
redis.call('rpush', KEYS[4], ARGV[11])
redis.call('expire', KEYS[4], ARGV[6])
return 1
"""
# KEYS: job, events. ARGV: progress ('' for none), then the events. Only while running:
# a line that comes late never follows the final state.
APPEND = """
if redis.call('hget', KEYS[1], 'state') ~= 'running' then return 0 end
if ARGV[1] ~= '' then redis.call('hset', KEYS[1], 'progress', ARGV[1]) end
for i = 2, #ARGV do redis.call('rpush', KEYS[2], ARGV[i]) end
return 1
"""
# KEYS: idempotency key. ARGV: job id, ttl, job prefix. The job holding it, if it is
# still recorded; else the key is this job's (nil).
HOLD = """
local held = redis.call('get', KEYS[1])
if held and held ~= ARGV[1] and redis.call('exists', ARGV[3] .. held) == 1 then return held end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# KEYS: index. ARGV: top, bottom, after score ('' for none), after id, limit, scan limit,
# batch, now, job prefix, the wanted caller, zone, script, state, trigger ('' for any),
# then the record's fields. Returns {more, last score, last id, n, the n records'
# fields ('\0' for a missing one)...}: `more` 1 when the page is full (another job
# follows), 2 when the scan limit stopped it, 0 at the end of the index.
LIST = """
local top, bottom = ARGV[1], ARGV[2]
local after_score, after_id = tonumber(ARGV[3]), ARGV[4]
local limit, scan_limit, batch = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now, prefix = tonumber(ARGV[8]), ARGV[9]
local fields, at = {}, {}
for i = 15, #ARGV do fields[#fields + 1] = ARGV[i]; at[ARGV[i]] = #fields end
local wanted = {}  -- {field's place, value wanted, the value of a record without it}
for i, name in ipairs({'caller', 'zone', 'script', 'state', 'trigger'}) do
  local missing = name == 'trigger' and 'call' or ''
  if ARGV[9 + i] ~= '' then wanted[#wanted + 1] = {at[name], ARGV[9 + i], missing} end
end
-- Byte order, as the sorted set orders equal scores (Lua's `<` on strings may collate).
local function before(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = a:byte(k), b:byte(k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local expires = at['expires_at']
local found, scanned, skip = 0, 0, 0
local out = {0, '', '', 0}  -- then the records' fields (not unpacked: Lua's stack is small)
local function answer(more)
  out[1], out[4] = more, found
  return out
end
while scanned < scan_limit do
  local entries = redis.call('zrevrangebyscore', KEYS[1], top, bottom, 'WITHSCORES',
    'LIMIT', skip, batch)
  if #entries == 0 then return answer(0) end
  local gone = {}
  for i = 1, #entries, 2 do
    local id, score = entries[i], entries[i + 1]
    local number = tonumber(score)
    scanned = scanned + 1
    if not after_score or number < after_score or
      (number == after_score and before(id, after_id)) then
      out[2], out[3] = score, id
      local values = redis.call('hmget', prefix .. id, unpack(fields))
      if not values[1] then
        gone[#gone + 1] = id
      else
        local ok = values[expires] == false or values[expires] == '' or
          tonumber(values[expires]) > now
        for _, want in ipairs(wanted) do
          if (values[want[1]] or want[3]) ~= want[2] then ok = false end
        end
        if ok then
          if found == limit then return answer(1) end
          found = found + 1
          for j = 1, #fields do out[#out + 1] = values[j] or '\\0' end
        end
      end
    end
  end
  if #gone > 0 then redis.call('zrem', KEYS[1], unpack(gone)) end
  skip = skip + #entries / 2 - #gone
end
return answer(2)
"""
# KEYS: job. Asks a running job to stop; returns the state found.
ASK_STOP = """
local state = redis.call('hget', KEYS[1], 'state')
if state == 'running' then redis.call('hset', KEYS[1], 'cancel_requested', '1') end
return state or ''
"""
