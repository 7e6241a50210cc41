-- Colorgate's routing at request time: which color is live, and the write freeze.
--
-- Both are small files in the edge's state volume, written by Colorgate with one
-- atomic rename each (deploy/edge.py), and read here on every request, so a switch
-- or a freeze takes effect without a reload: keep-alive connections stay open, and
-- streams on the old color go on until that color is stopped.
--
--   live         color=blue|green, version=TAG   (absent: no color is live, 503)
--   freeze       hold=SECONDS, requests=database  (absent: writes pass)
--   canary       color=, version=, percent=1-99, offset=0-99 (decision=promote)
--                (absent, or naming the live color: everyone gets the live color;
--                present: that share of users gets the canary color instead, each
--                user in a bucket 0-99 kept in a cookie signed by the edge, new users
--                (and a cookie whose signature is wrong) hashed by address and user
--                agent into one, so a user stays on one color and cannot choose it)
--   maintenance  retry=SECONDS, since=TIME, message=TEXT
--                (absent: the app is served; present: every route answers 503 with
--                Retry-After and the message)
--   gate-token   made at start (entrypoint.sh). A request carrying it in X-Colorgate-Gate
--                is Colorgate's own gates': it passes maintenance mode and a write
--                freeze (it judges the app users are kept from), is served the color it
--                names in X-Colorgate-Serve during a canary, is exempt from the limits
--                (nginx.conf), and is told which container answered (X-Colorgate-Upstream)
--
-- During a freeze a request with a method other than GET, HEAD or OPTIONS (with
-- `requests=database`: any request to a route of the database's clients) is held
-- for up to `hold` seconds and passed on (to the color live then) when the freeze
-- ends; one still waiting at the bound gets 503 with Retry-After. Requests in flight
-- are counted per color, so that a color is stopped only after its requests drained,
-- and writes in flight on their own, so that a freeze knows when the last write let
-- through before it has been answered.

local M = {}

local STATE = "/etc/colorgate/state/"
local LIVE = STATE .. "live"
local FREEZE = STATE .. "freeze"
local MAINTENANCE = STATE .. "maintenance"
local CANARY = STATE .. "canary"
local GATE_TOKEN = STATE .. "gate-token"
local BUCKET_COOKIE = "colorgate_bucket"
local COLORS = { blue = true, green = true }
local SAFE = { GET = true, HEAD = true, OPTIONS = true }
local counts = ngx.shared.colorgate

local function fields(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local out = {}
  for key, value in text:gmatch("([%w_]+)=([^\n]*)") do out[key] = value end
  return out
end

-- The live color and version, or nil (no file, or a file that is not valid).
function M.live()
  local f = fields(LIVE)
  if not f then return nil end
  if not COLORS[f.color] or not (f.version or ""):match("^[%w][%w._-]*$") then
    ngx.log(ngx.ERR, "colorgate: ", LIVE, " is not valid; no color is routed")
    return nil
  end
  return f
end

-- The canary beside `live` (another color, a share above 0), or nil.
function M.canary(live)
  local c = fields(CANARY)
  if not c or not COLORS[c.color] or (live and c.color == live.color) or not (c.version or ""):match("^[%w][%w._-]*$") then
    return nil
  end
  c.percent, c.offset = tonumber(c.percent or "") or 0, tonumber(c.offset or "") or 0
  if c.percent <= 0 then return nil end
  return c
end

-- The gates' token, read once per worker ("" until the file is there).
local token
local function gate_token()
  if token then return token end
  local f = io.open(GATE_TOKEN, "r")
  if not f then return "" end
  token = f:read("*l") or ""
  f:close()
  return token
end

-- Whether the request is Colorgate's gates' (it carries their token).
local function is_gate()
  local sent = ngx.var.http_x_colorgate_gate
  return sent ~= nil and sent ~= "" and sent == gate_token()
end

-- The signature of a bucket in its cookie (keyed by the gates' token, which users never see).
local function signature(b)
  local mac = ngx.encode_base64(ngx.hmac_sha1(gate_token(), BUCKET_COOKIE .. "=" .. b))
  return (mac:sub(1, 16):gsub("[+/]", { ["+"] = "-", ["/"] = "_" }))
end

-- A user's bucket (0-99): from the cookie when the edge signed it, else hashed from the
-- client and given to it.
local function bucket()
  local n, sig = (ngx.var["cookie_" .. BUCKET_COOKIE] or ""):match("^(%d%d?)%.([%w_-]+)$")
  if n and gate_token() ~= "" and sig == signature(n) then return tonumber(n) end
  local b = ngx.crc32_short((ngx.var.remote_addr or "") .. "|" .. (ngx.var.http_user_agent or "")) % 100
  ngx.var.cg_cookie = BUCKET_COOKIE .. "=" .. b .. "." .. signature(b) .. "; Path=/; Max-Age=2592000; Secure; HttpOnly; SameSite=Lax"
  return b
end

-- The hold bound of a freeze in seconds, or nil when writes are open; and whether it
-- holds every request to a route of the database's clients (a database restart).
function M.freeze()
  local f = fields(FREEZE)
  if not f then return nil end
  return tonumber(f.hold or "") or 0, f.requests == "database"
end

local function answer(status, content_type, body, headers)
  ngx.status = status
  ngx.header["Content-Type"] = content_type
  for name, value in pairs(headers or {}) do ngx.header[name] = value end
  ngx.say(body)
  return ngx.exit(ngx.HTTP_OK)
end

-- Maintenance mode: a 503 page (HTML for browsers, JSON otherwise) with Retry-After.
-- The message was checked when it was written (no markup, quotes or control characters).
local function maintenance(m)
  local headers = { ["Retry-After"] = m.retry or "60", ["X-Colorgate-Maintenance"] = "on", ["Cache-Control"] = "no-store" }
  local message = m.message or ""
  if message == "" then message = "This service is down for maintenance. Please try again shortly." end
  if (ngx.var.http_accept or ""):find("text/html", 1, true) then
    return answer(503, "text/html; charset=utf-8", '<!doctype html><html lang="en"><head><meta charset="utf-8">'
      .. '<title>Maintenance</title></head><body><h1>Maintenance</h1><p>' .. message .. '</p></body></html>', headers)
  end
  return answer(503, "application/json", '{"error": "maintenance", "message": "' .. message .. '"}', headers)
end

-- access_by_lua for the app's routes.
function M.route()
  local gate = is_gate()
  ngx.ctx.cg_gate = gate
  local m = not gate and fields(MAINTENANCE)
  if m then return maintenance(m) end
  local hold, all
  if not gate then hold, all = M.freeze() end
  if hold and (not SAFE[ngx.req.get_method()] or (all and ngx.var.cg_database == "1")) then
    local started = ngx.now()
    local what = SAFE[ngx.req.get_method()] and "requests" or "writes"
    while hold do
      ngx.update_time()
      if ngx.now() - started >= hold then
        return answer(503, "application/json",
          '{"error": "maintenance: ' .. what .. ' are paused for a moment (database move or restart); retry shortly"}',
          { ["Retry-After"] = "5", ["X-Colorgate-Maintenance"] = "write-freeze" })
      end
      ngx.sleep(0.02)
      hold = M.freeze()
    end
    ngx.update_time()
    ngx.var.cg_held = string.format("%d", (ngx.now() - started) * 1000)
  end
  ngx.var.cg_writes = hold and "frozen" or "open"
  local live = M.live()
  if not live then
    return answer(503, "text/plain", "no active color")
  end
  local color, version = live.color, live.version
  local c = M.canary(live)
  if c then
    local serve = gate and ngx.var.http_x_colorgate_serve  -- the gates name the color under test
    if serve ~= c.color and serve ~= color then serve = nil end
    if serve == c.color or (not serve and (bucket() + c.offset) % 100 < c.percent) then
      color, version = c.color, c.version
    end
  end
  ngx.var.cg_color = color
  ngx.var.cg_version = version
  ngx.ctx.cg_color = color
  counts:incr(color, 1, 0)
  if not SAFE[ngx.req.get_method()] then
    ngx.ctx.cg_write = true
    counts:incr("writes", 1, 0)
  end
end

-- header_filter_by_lua: the address of the container that answered, to the gates only.
function M.answered()
  if ngx.ctx.cg_gate then ngx.header["X-Colorgate-Upstream"] = ngx.var.upstream_addr end
end

-- log_by_lua: a request routed to a color has ended (answered, failed or aborted).
function M.done()
  local color = ngx.ctx.cg_color
  if color then counts:incr(color, -1, 0) end
  if ngx.ctx.cg_write then counts:incr("writes", -1, 0) end
end

-- content_by_lua for the local state endpoint that Colorgate reads through docker exec.
function M.state()
  local live = M.live() or {}
  local hold = M.freeze()
  ngx.header["Content-Type"] = "text/plain"
  ngx.say("color=", live.color or "")
  ngx.say("version=", live.version or "")
  ngx.say("writes=", hold and "frozen" or "open")
  ngx.say("maintenance=", fields(MAINTENANCE) and "on" or "off")
  local c = M.canary(live.color and live or nil)
  ngx.say("canary=", c and (c.color .. " " .. c.percent) or "off")
  for color in pairs(COLORS) do ngx.say("inflight_", color, "=", counts:get(color) or 0) end
  ngx.say("inflight_writes=", counts:get("writes") or 0)
end

return M
