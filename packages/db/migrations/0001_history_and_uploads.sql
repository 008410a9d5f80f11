CREATE TABLE "uploads" (
	"identifier" text PRIMARY KEY NOT NULL,
	"uploader" text NOT NULL,
	"content_type" text NOT NULL,
	"size_bytes" bigint NOT NULL,
	"storage" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
DROP INDEX "messages_room_idx";--> statement-breakpoint
CREATE INDEX "messages_file_idx" ON "messages" USING btree ("file_identifier");--> statement-breakpoint
CREATE INDEX "messages_room_position_idx" ON "messages" USING btree ("room_id","stream_position");