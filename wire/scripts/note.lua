-- note: nothing but its audit record (audit.lua around it): an operator's look that the stream
-- must show, such as revealing a job's chat text on the ops page.
--
-- KEYS: none of its own; ARGV: 1 what to record as the outcome ('shown')
return ARGV[1]
