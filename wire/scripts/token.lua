-- token: nothing but the token bucket around it (wire/lua.py rate_limited("token")): a read, or a
-- refused submit, still costs its caller a token.
--
-- KEYS: none of its own; ARGV: none of its own.
return 1
