/** The single truth for D1's tables; `npm run db:generate` writes db/migrations from it. */
import { sqliteTable, text, integer } from "drizzle-orm/sqlite-core";

export const sweeps = sqliteTable("sweeps", {
  id: text("id").primaryKey(),
  createdAt: integer("created_at").notNull(),
  spec: text("spec").notNull(),
});
