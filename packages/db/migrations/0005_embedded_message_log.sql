CREATE TABLE "message_log" (
	"position" bigint PRIMARY KEY NOT NULL,
	"entry" text NOT NULL,
	"consumer" text,
	"delivered_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "message_log_dead" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"fields" jsonb NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE INDEX "message_log_undelivered_idx" ON "message_log" USING btree ("position") WHERE "message_log"."consumer" IS NULL;