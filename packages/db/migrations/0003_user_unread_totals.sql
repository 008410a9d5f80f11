CREATE TABLE "user_unread" (
	"username" text PRIMARY KEY NOT NULL,
	"total" integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
INSERT INTO "user_unread" ("username", "total")
SELECT "username", sum("unread_count") FROM "conversation_members" GROUP BY "username"
ON CONFLICT ("username") DO UPDATE SET "total" = EXCLUDED."total";
