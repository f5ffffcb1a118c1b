-- Switchboard's Redis function library (docs/protocol.md §7): a publication to a channel that
-- keeps history gets its offset, is recorded and is published in ONE atomic step, whichever
-- node or back end publishes it. Every node installs this library (FUNCTION LOAD REPLACE) when
-- it connects to Redis; the lines above this comment are generated from the node's
-- configuration: the library name, the channel key prefix, the publish command (SPUBLISH under
-- Redis Cluster) and the [[channels]] rules' history settings, so back ends need not know them.
--
-- Keys, all in the hash slot of the channel key PREFIX:ch:CHANNEL (KEYS[1]): a channel key
-- with a hash tag ({...}) appends ":meta" and ":stream"; any other is wrapped as the tag,
-- "{PREFIX:ch:CHANNEL}:meta", so the function works on Redis Cluster with sharded pub/sub.
--   meta   a hash: "top" (the last offset given) and "epoch" (changes whenever history is lost)
--   stream a stream of the recorded envelopes, entry id "0-<offset>", trimmed to the rule's size
-- Both expire after the rule's ttl without a publication.

-- The same glob as the server's channel rules: `*` matches any run of characters.
local function glob(pattern, text)
  local p, t = 1, 1
  local star, star_t = nil, nil
  local plen, tlen = #pattern, #text
  while t <= tlen do
    local pc = string.byte(pattern, p)
    if pc == 42 then
      star, star_t = p, t
      p = p + 1
    elseif pc ~= nil and pc == string.byte(text, t) then
      p = p + 1
      t = t + 1
    elseif star ~= nil then
      star_t = star_t + 1
      p, t = star + 1, star_t
    else
      return false
    end
  end
  while string.byte(pattern, p) == 42 do
    p = p + 1
  end
  return p > plen
end

-- The size and ttl (ms) of the first rule matching the channel, or nil when it keeps no history.
local function rule_for(key)
  if string.sub(key, 1, #CHANNEL_PREFIX) ~= CHANNEL_PREFIX then
    return nil
  end
  local channel = string.sub(key, #CHANNEL_PREFIX + 1)
  for _, rule in ipairs(RULES) do
    if glob(rule[1], channel) then
      if rule[2] > 0 then
        return rule[2], rule[3]
      end
      return nil
    end
  end
  return nil
end

local function has_hash_tag(key)
  local open = string.find(key, '{', 1, true)
  if open == nil then
    return false
  end
  local close = string.find(key, '}', open + 1, true)
  return close ~= nil and close > open + 1
end

local function history_keys(key)
  local base = key
  if not has_hash_tag(key) then
    base = '{' .. key .. '}'
  end
  return base .. ':meta', base .. ':stream'
end

local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'

-- A new epoch: the server's clock in microseconds, in base 36 (about ten characters).
local function new_epoch()
  local now = redis.call('TIME')
  local n = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local epoch = ''
  while n > 0 do
    local digit = n % 36
    epoch = string.sub(DIGITS, digit + 1, digit + 1) .. epoch
    n = math.floor(n / 36)
  end
  return epoch
end

-- The channel's top offset and epoch. A channel without them (new, expired, its meta hash
-- evicted or flushed) starts over: a new epoch, offset 0, and no stream left from before.
local function position(meta, stream, ttl)
  local state = redis.call('HMGET', meta, 'top', 'epoch')
  local top, epoch = tonumber(state[1]), state[2]
  if top == nil or not epoch then
    top, epoch = 0, new_epoch()
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'top', 0, 'epoch', epoch)
    redis.call('PEXPIRE', meta, ttl)
  end
  return top, epoch
end

local ENVELOPE_FIELDS = { data = true, from = true, kind = true }

-- What the envelope is ('json' or 'msgpack'), or nil and why it cannot be recorded.
local function envelope_kind(envelope)
  local first = string.find(envelope, '%S')
  local kind, ok, decoded
  if first ~= nil and string.sub(envelope, first, first) == '{' then
    kind = 'json'
    ok, decoded = pcall(cjson.decode, envelope)
  else
    kind = 'msgpack'
    local header = string.byte(envelope, 1)
    if header == nil or header < 0x80 or header > 0x8d then
      return nil, 'the envelope must be a JSON object, or a MessagePack map of at most 13 entries'
    end
    ok, decoded = pcall(cmsgpack.unpack, envelope)
  end
  if not ok or type(decoded) ~= 'table' or decoded['data'] == nil then
    return nil, 'the envelope must be an object with "data"'
  end
  for field, _ in pairs(decoded) do
    if not ENVELOPE_FIELDS[field] then
      return nil, 'the envelope has an unknown field (only "data", "from" and "kind")'
    end
  end
  if decoded['kind'] ~= nil and decoded['kind'] ~= 'message' then
    return nil, 'only messages are recorded in history'
  end
  return kind
end

-- The envelope with its position: JSON gets the fields in front, MessagePack at the end.
local function positioned(envelope, kind, offset, epoch)
  if kind == 'json' then
    local first = string.find(envelope, '{', 1, true)
    return '{"offset":' .. string.format('%.0f', offset) .. ',"epoch":"' .. epoch .. '",'
      .. string.sub(envelope, first + 1)
  end
  return string.char(string.byte(envelope, 1) + 2) .. string.sub(envelope, 2)
    .. cmsgpack.pack('offset') .. cmsgpack.pack(offset)
    .. cmsgpack.pack('epoch') .. cmsgpack.pack(epoch)
end

-- The history rule: the node's own (size and ttl in args), else the installed rules'.
local function rule_of(key, size, ttl)
  if size ~= nil and size ~= '' then
    return tonumber(size), tonumber(ttl)
  end
  return rule_for(key)
end

-- FCALL PREFIX_publish 1 PREFIX:ch:CHANNEL <envelope> [size ttl_ms]
-- Returns the publication's offset, or nil for a channel that keeps no history (published as
-- with PUBLISH, not recorded).
local function publish(keys, args)
  local key, envelope = keys[1], args[1]
  if key == nil or envelope == nil then
    return redis.error_reply('usage: FCALL ' .. PUBLISH_FUNCTION .. ' 1 <channel key> <envelope>')
  end
  local size, ttl = rule_of(key, args[2], args[3])
  if size == nil or size <= 0 then
    redis.call(PUBLISH, key, envelope)
    return nil
  end
  if ttl == nil or ttl <= 0 then
    return redis.error_reply('history ttl must be a positive number of milliseconds')
  end
  local kind, problem = envelope_kind(envelope)
  if kind == nil then
    return redis.error_reply(problem)
  end
  local meta, stream = history_keys(key)
  local _, epoch = position(meta, stream, ttl)
  local offset = redis.call('HINCRBY', meta, 'top', 1)
  local payload = positioned(envelope, kind, offset, epoch)
  local id = '0-' .. string.format('%.0f', offset)
  local added = redis.pcall('XADD', stream, 'MAXLEN', size, id, 'p', payload)
  if type(added) == 'table' and added['err'] then
    -- A stream ahead of its meta hash (written by hand): history restarts from this offset.
    redis.call('DEL', stream)
    redis.call('XADD', stream, 'MAXLEN', size, id, 'p', payload)
  end
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', stream, ttl)
  redis.call(PUBLISH, key, payload)
  return offset
end

-- FCALL PREFIX_history 1 PREFIX:ch:CHANNEL <since> <before> <limit> <newest_first> [size ttl_ms]
-- since/before: offsets bounding the range (exclusive), '' for none; newest_first: '1' or '0'.
-- Returns { top, epoch, envelope... } (the envelopes carry their offsets).
local function history(keys, args)
  local key = keys[1]
  local since, before, limit = tonumber(args[1]), tonumber(args[2]), tonumber(args[3]) or 0
  local newest_first = args[4] == '1'
  local size, ttl = rule_of(key, args[5], args[6])
  if key == nil or size == nil or size <= 0 or ttl == nil or ttl <= 0 then
    return redis.error_reply('the channel keeps no history')
  end
  local meta, stream = history_keys(key)
  local top, epoch = position(meta, stream, ttl)
  local result = { top, epoch }
  if before ~= nil and before > top then
    before = nil
  end
  local empty = limit <= 0 or (since ~= nil and since >= top) or (before ~= nil and before <= 1)
  if empty then
    return result
  end
  local low, high = '-', '+'
  if since ~= nil and since >= 0 then
    low = '(0-' .. string.format('%.0f', since)
  end
  if before ~= nil then
    high = '(0-' .. string.format('%.0f', before)
  end
  local entries
  if newest_first then
    entries = redis.call('XREVRANGE', stream, high, low, 'COUNT', limit)
  else
    entries = redis.call('XRANGE', stream, low, high, 'COUNT', limit)
  end
  for _, entry in ipairs(entries) do
    result[#result + 1] = entry[2][2]
  end
  return result
end

redis.register_function(PUBLISH_FUNCTION, publish)
redis.register_function(HISTORY_FUNCTION, history)
