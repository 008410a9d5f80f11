DROP INDEX "messages_file_idx";--> statement-breakpoint
CREATE INDEX "messages_file_idx" ON "messages" USING btree ("file_identifier") WHERE "messages"."file_identifier" IS NOT NULL;