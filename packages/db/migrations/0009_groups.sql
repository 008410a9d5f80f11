CREATE TABLE "chat_groups" (
	"id" uuid PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"created_by" text NOT NULL,
	"created_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
ALTER TABLE "conversation_members" ADD COLUMN "role" text;--> statement-breakpoint
ALTER TABLE "messages" ADD COLUMN "event" text;--> statement-breakpoint
CREATE INDEX "conversation_members_group_idx" ON "conversation_members" USING btree ("other_username","username") WHERE "conversation_members"."role" IS NOT NULL;--> statement-breakpoint
-- Groups: a message or read whose recipient is `#<group id>` is a group's. Its sides are the group's
-- members (conversation_members rows with that other_username and a role), read under the group's
-- lock (lock space p_lock_space + 1, taken before any user's, as the API does when it changes the
-- membership): the members counted are exactly the ones the API committed. A group side is never
-- created here (only the API adds members), so a sender or reader removed meanwhile moves nothing.
-- A group's unread count is its chat messages from anyone else past the member's read position
-- (system events, rows with an event, never count). Otherwise the function is 0008's.
CREATE OR REPLACE FUNCTION chat_persist_batch(
	p_lock_space integer,
	p_m_id uuid[], p_m_position bigint[], p_m_room text[], p_m_from text[], p_m_to text[], p_m_content text[],
	p_m_url text[], p_m_file text[], p_m_url_expiration timestamptz[], p_m_client text[], p_m_date timestamptz[],
	p_r_reader text[], p_r_other text[], p_r_position bigint[]
) RETURNS TABLE (o_kind "char", o_user text, o_other text, o_count integer, o_id uuid)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
	grp text[];
	ins_id uuid[];
	ins_position bigint[];
	ins_from text[];
	ins_to text[];
	ins_date timestamptz[];
BEGIN
	SELECT coalesce(array_agg(DISTINCT g), '{}') INTO grp FROM unnest(p_m_to || p_r_other) AS g WHERE left(g, 1) = '#';
	-- Groups first, then users, each in key order, so two workers (or a worker and the API) never deadlock.
	PERFORM pg_advisory_lock(p_lock_space + 1, k.h) FROM (
		SELECT DISTINCT hashtext(g) AS h FROM unnest(grp) AS g ORDER BY h) AS k;
	PERFORM pg_advisory_lock(p_lock_space, k.h) FROM (
		SELECT DISTINCT hashtext(x.u) AS h FROM (
			SELECT u FROM unnest(p_m_from || p_m_to || p_r_reader || p_r_other) AS u WHERE left(u, 1) <> '#'
			UNION ALL
			SELECT cm.username FROM conversation_members AS cm WHERE cm.other_username = ANY (grp) AND cm.role IS NOT NULL) AS x
		ORDER BY h) AS k;

	-- Idempotent on the id: an entry written by an earlier attempt moves no counter.
	WITH ins AS (
		INSERT INTO messages AS m (id, stream_position, room_id, from_user, to_user, content, multimedia_url,
		                           file_identifier, multimedia_url_expiration, client_id, date_added)
		SELECT * FROM unnest(p_m_id, p_m_position, p_m_room, p_m_from, p_m_to, p_m_content, p_m_url,
		                     p_m_file, p_m_url_expiration, p_m_client, p_m_date)
		ON CONFLICT (id) DO NOTHING
		RETURNING m.id, m.stream_position, m.from_user, m.to_user, m.date_added)
	SELECT coalesce(array_agg(ins.id ORDER BY ins.stream_position), '{}'),
	       coalesce(array_agg(ins.stream_position ORDER BY ins.stream_position), '{}'),
	       coalesce(array_agg(ins.from_user ORDER BY ins.stream_position), '{}'),
	       coalesce(array_agg(ins.to_user ORDER BY ins.stream_position), '{}'),
	       coalesce(array_agg(ins.date_added ORDER BY ins.stream_position), '{}')
	INTO ins_id, ins_position, ins_from, ins_to, ins_date
	FROM ins;

	-- New counters, one row per conversation side touched (see 0006 and 0008). A group message has a
	-- side per member but its sender: one publish on the group's channel delivers it live, and these
	-- rows are what the members' counters and notifications come from.
	RETURN QUERY
	WITH events AS (
		SELECT t.u, t.o, t.pos, t.id, t.at, true AS incoming, false AS is_read
		FROM unnest(ins_to, ins_from, ins_position, ins_id, ins_date) AS t(u, o, pos, id, at)
		WHERE left(t.u, 1) <> '#'
		UNION ALL
		SELECT cm.username, t.g, t.pos, t.id, t.at, true, false
		FROM unnest(ins_to, ins_from, ins_position, ins_id, ins_date) AS t(g, f, pos, id, at)
		JOIN conversation_members AS cm ON cm.other_username = t.g AND cm.role IS NOT NULL AND cm.username <> t.f
		WHERE left(t.g, 1) = '#'
		UNION ALL
		SELECT t.u, t.o, t.pos, t.id, t.at, false, false
		FROM unnest(ins_from, ins_to, ins_position, ins_id, ins_date) AS t(u, o, pos, id, at)
		UNION ALL
		SELECT t.u, t.o, t.pos, NULL, NULL, false, true
		FROM unnest(p_r_reader, p_r_other, p_r_position) AS t(u, o, pos)),
	sides AS (
		SELECT e.u, e.o,
		       max(e.pos) FILTER (WHERE e.is_read) AS read_pos,
		       array_agg(e.pos) FILTER (WHERE e.incoming) AS incoming,
		       (array_agg(e.id ORDER BY e.pos DESC) FILTER (WHERE NOT e.is_read))[1] AS last_id,
		       (array_agg(e.at ORDER BY e.pos DESC) FILTER (WHERE NOT e.is_read))[1] AS last_at
		FROM events AS e GROUP BY e.u, e.o),
	cur AS (
		SELECT s.u, s.o, cm.username IS NOT NULL AS present, coalesce(cm.unread_count, 0) AS old_unread,
		       s.read_pos IS NOT NULL AS recount, s.incoming, s.incoming IS NOT NULL OR s.read_pos IS NOT NULL AS announced,
		       greatest(coalesce(cm.read_position, 0), coalesce(s.read_pos, 0)) AS read_to, s.last_id, s.last_at
		FROM sides AS s LEFT JOIN conversation_members AS cm ON cm.username = s.u AND cm.other_username = s.o
		-- A group side exists only as a membership: none for someone no longer a member.
		WHERE left(s.o, 1) <> '#' OR cm.role IS NOT NULL),
	counted AS (
		SELECT c.u, c.o, c.present, c.old_unread, c.read_to, c.last_id, c.last_at, c.announced, c.recount, CASE
			WHEN c.recount AND left(c.o, 1) = '#' THEN (SELECT count(*)::integer FROM messages AS m
			      WHERE m.room_id = c.o AND m.stream_position > c.read_to AND m.from_user <> c.u AND m.event IS NULL)
			WHEN c.recount THEN (SELECT count(*)::integer FROM messages AS m
			      WHERE m.to_user = c.u AND m.from_user = c.o AND m.stream_position > c.read_to)
			ELSE c.old_unread + (SELECT count(*)::integer FROM unnest(c.incoming) AS i(pos) WHERE i.pos > c.read_to) END AS unread
		FROM cur AS c),
	-- updated and created run although nothing reads them: a data-modifying WITH always runs to completion.
	updated AS (
		UPDATE conversation_members AS cm SET
			unread_count = n.unread,
			read_position = n.read_to,
			last_message_id = CASE WHEN n.last_id IS NOT NULL AND (cm.last_activity_at IS NULL OR n.last_at >= cm.last_activity_at)
			                       THEN n.last_id ELSE cm.last_message_id END,
			last_activity_at = CASE WHEN n.last_at IS NOT NULL AND (cm.last_activity_at IS NULL OR n.last_at >= cm.last_activity_at)
			                        THEN n.last_at ELSE cm.last_activity_at END
		FROM counted AS n
		WHERE cm.username = n.u AND cm.other_username = n.o),
	created AS (
		INSERT INTO conversation_members (username, other_username, unread_count, read_position, last_message_id, last_activity_at)
		SELECT n.u, n.o, n.unread, n.read_to, n.last_id, n.last_at FROM counted AS n WHERE NOT n.present),
	deltas AS (
		SELECT n.u, sum(n.unread - n.old_unread)::integer AS delta, bool_or(n.announced) AS announced FROM counted AS n GROUP BY n.u),
	totals AS (
		INSERT INTO user_unread AS uu (username, total)
		SELECT d.u, d.delta FROM deltas AS d WHERE d.delta <> 0
		ON CONFLICT (username) DO UPDATE SET total = uu.total + EXCLUDED.total
		RETURNING uu.username, uu.total)
	SELECT 'i'::"char", NULL::text, NULL::text, NULL::integer, i.id FROM unnest(ins_id) AS i(id)
	UNION ALL
	SELECT 'p'::"char", n.u, n.o, n.unread, NULL::uuid FROM counted AS n WHERE n.announced
	UNION ALL
	SELECT 't'::"char", t.username, NULL::text, t.total, NULL::uuid FROM totals AS t JOIN deltas AS d ON d.u = t.username WHERE d.announced
	UNION ALL
	SELECT 't'::"char", uu.username, NULL::text, uu.total, NULL::uuid
	FROM deltas AS d JOIN user_unread AS uu ON uu.username = d.u WHERE d.delta = 0 AND d.announced
	UNION ALL
	-- A reader's receipt: the newest message of the others it has now read, NULL when there is none yet.
	SELECT 'r'::"char", n.u, n.o, NULL::integer,
	       CASE WHEN left(n.o, 1) = '#' THEN
	         (SELECT m.id FROM messages AS m
	          WHERE m.room_id = n.o AND m.stream_position <= n.read_to AND m.from_user <> n.u AND m.event IS NULL
	          ORDER BY m.stream_position DESC LIMIT 1)
	       ELSE
	         (SELECT m.id FROM messages AS m
	          WHERE m.to_user = n.u AND m.from_user = n.o AND m.stream_position <= n.read_to
	          ORDER BY m.stream_position DESC LIMIT 1) END
	FROM counted AS n WHERE n.recount;
END
$$;
