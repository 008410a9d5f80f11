CREATE TABLE "conversation_members" (
	"username" text NOT NULL,
	"other_username" text NOT NULL,
	"unread_count" integer DEFAULT 0 NOT NULL,
	"read_position" bigint DEFAULT 0 NOT NULL,
	"last_message_id" uuid,
	"last_activity_at" timestamp with time zone,
	CONSTRAINT "conversation_members_username_other_username_pk" PRIMARY KEY("username","other_username")
);
--> statement-breakpoint
CREATE TABLE "messages" (
	"id" uuid PRIMARY KEY NOT NULL,
	"stream_position" bigint NOT NULL,
	"room_id" text NOT NULL,
	"from_user" text NOT NULL,
	"to_user" text NOT NULL,
	"content" text NOT NULL,
	"multimedia_url" text,
	"file_identifier" text,
	"multimedia_url_expiration" timestamp with time zone,
	"client_id" text,
	"date_added" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE INDEX "conversation_members_activity_idx" ON "conversation_members" USING btree ("username","last_activity_at" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "messages_unread_idx" ON "messages" USING btree ("to_user","from_user","stream_position");--> statement-breakpoint
CREATE INDEX "messages_room_idx" ON "messages" USING btree ("room_id","id");