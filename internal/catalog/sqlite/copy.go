package sqlitecat

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	"github.com/backstop-pve/backstop/internal/secret"
)

// copyTables are the catalog's tables in an order that respects their
// foreign keys.
var copyTables = []string{
	"namespaces", "tokens", "jobs", "snapshots", "disks", "archives", "files",
	"chunks", "tasks", "task_log", "backup_runs",
}

// CopyReport says what CopyToPostgres copied.
type CopyReport struct {
	Tables   []TableCopy // in copy order
	Duration time.Duration
}

// TableCopy is one table's share of a copy.
type TableCopy struct {
	Name string
	Rows int64
}

// Rows returns the rows copied in all.
func (r CopyReport) Rows() int64 {
	var n int64
	for _, t := range r.Tables {
		n += t.Rows
	}
	return n
}

// CopyToPostgres copies the embedded catalog src into the Postgres catalog
// at dsn, for a repository that outgrows one machine. It applies the
// Postgres migrations, refuses (ErrConflict) unless every catalog table
// there is empty, and copies every table in one Postgres transaction
// (COPY), from one read transaction of src, so the result is all or
// nothing and consistent even if src is written meanwhile. Row counts are
// checked before the commit. Chunk objects are not touched: the chunk store
// stays where it is.
//
// Columns are matched by name and converted by their Postgres type (times
// from unix microseconds, uuids from text, booleans from 0/1, text[] from
// JSON); a column either side lacks is an error, so schema drift between
// the two backends is caught here rather than lost.
func CopyToPostgres(ctx context.Context, src *Store, dsn secret.String, logger *slog.Logger) (CopyReport, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	if err := catalog.Migrate(ctx, dsn, logger); err != nil {
		return CopyReport{}, fmt.Errorf("catalog: copy to postgres: %w", err)
	}
	cc, err := pgx.ParseConfig(string(dsn))
	if err != nil {
		// The parse error may quote the DSN, password included: drop it.
		return CopyReport{}, fmt.Errorf("catalog: copy to postgres: parse DSN: %w", backup.ErrInvalid)
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return CopyReport{}, fmt.Errorf("catalog: copy to postgres: %w: %w", backup.ErrUnavailable, err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()

	var report CopyReport
	err = pgx.BeginFunc(ctx, conn, func(dst pgx.Tx) error {
		// Keep writers out until the commit: a server already running on
		// the target must not slip rows in between the check and the copy.
		if _, err := dst.Exec(ctx, `LOCK TABLE `+strings.Join(copyTables, ", ")+` IN EXCLUSIVE MODE`); err != nil {
			return err
		}
		if err := checkEmpty(ctx, dst); err != nil {
			return err
		}
		pgCols, err := postgresColumns(ctx, dst)
		if err != nil {
			return err
		}
		err = src.readTx(ctx, func(rtx *sql.Tx) error {
			if err := checkTables(ctx, rtx); err != nil {
				return err
			}
			for _, table := range copyTables {
				n, err := copyTable(ctx, rtx, dst, table, pgCols[table])
				if err != nil {
					return fmt.Errorf("table %s: %w", table, err)
				}
				report.Tables = append(report.Tables, TableCopy{Name: table, Rows: n})
				logger.InfoContext(ctx, "catalog: copied table", "table", table, "rows", n)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, t := range report.Tables {
			var n int64
			if err := dst.QueryRow(ctx, `SELECT count(*) FROM `+t.Name).Scan(&n); err != nil {
				return err
			}
			if n != t.Rows {
				return fmt.Errorf("table %s: %d rows in Postgres after copying %d", t.Name, n, t.Rows)
			}
		}
		return nil
	})
	if err != nil {
		return CopyReport{}, fmt.Errorf("catalog: copy to postgres: %w", err)
	}
	report.Duration = time.Since(start)
	return report, nil
}

// checkEmpty refuses a target that holds any catalog row.
func checkEmpty(ctx context.Context, dst pgx.Tx) error {
	var full []string
	for _, table := range copyTables {
		var has bool
		if err := dst.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+table+`)`).Scan(&has); err != nil {
			return err
		}
		if has {
			full = append(full, table)
		}
	}
	if len(full) > 0 {
		return backup.Errorf(backup.ErrConflict,
			"the Postgres catalog is not empty (rows in %s): copy only into a new database", strings.Join(full, ", "))
	}
	return nil
}

// checkTables refuses a source with tables the copy does not know: a
// migration added one and copyTables was not told.
func checkTables(ctx context.Context, rtx *sql.Tx) error {
	names, err := collect(ctx, rtx, func(r *sql.Rows) (string, error) {
		var n string
		return n, r.Scan(&n)
	}, `SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'goose_db_version'`)
	if err != nil {
		return err
	}
	for _, n := range names {
		if !slices.Contains(copyTables, n) {
			return fmt.Errorf("table %s of the embedded catalog has no place in the copy", n)
		}
	}
	return nil
}

// postgresColumns returns the data type of each column of the catalog
// tables in Postgres, by table and column.
func postgresColumns(ctx context.Context, dst pgx.Tx) (map[string]map[string]string, error) {
	rows, _ := dst.Query(ctx, `SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = ANY($1)`, copyTables)
	out := map[string]map[string]string{}
	var table, col, typ string
	_, err := pgx.ForEachRow(rows, []any{&table, &col, &typ}, func() error {
		if out[table] == nil {
			out[table] = map[string]string{}
		}
		out[table][col] = typ
		return nil
	})
	return out, err
}

// copyTable streams one table from SQLite into Postgres with COPY and
// checks the count against the source's.
func copyTable(ctx context.Context, rtx *sql.Tx, dst pgx.Tx, table string, pgTypes map[string]string) (int64, error) {
	cols, err := collect(ctx, rtx, func(r *sql.Rows) (string, error) {
		var n string
		return n, r.Scan(&n)
	}, `SELECT name FROM pragma_table_info(?) ORDER BY cid`, table)
	if err != nil {
		return 0, err
	}
	if len(cols) == 0 {
		return 0, fmt.Errorf("missing in the embedded catalog")
	}
	var missing []string
	for _, c := range cols {
		if _, ok := pgTypes[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return 0, fmt.Errorf("columns %s are missing in Postgres", strings.Join(missing, ", "))
	}
	if len(pgTypes) != len(cols) {
		extra := slices.DeleteFunc(slices.Sorted(maps.Keys(pgTypes)), func(c string) bool { return slices.Contains(cols, c) })
		return 0, fmt.Errorf("columns %s are missing in the embedded catalog", strings.Join(extra, ", "))
	}
	convs := make([]columnConv, len(cols))
	var sel []string
	for i, c := range cols {
		convs[i] = converter(pgTypes[c], c)
		sel = append(sel, convs[i].sel...)
	}
	var want int64
	if err := rtx.QueryRowContext(ctx, `SELECT count(*) FROM `+table).Scan(&want); err != nil {
		return 0, err
	}
	rows, err := rtx.QueryContext(ctx, `SELECT `+strings.Join(sel, ", ")+` FROM `+table)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n, err := dst.CopyFrom(ctx, pgx.Identifier{table}, cols, &rowSource{rows: rows, convs: convs})
	if err != nil {
		return 0, err
	}
	if n != want {
		return 0, fmt.Errorf("copied %d rows of %d", n, want)
	}
	return n, nil
}

// columnConv says how to select a column from SQLite (one or more
// expressions) and turn their values into what Postgres's type takes.
type columnConv struct {
	sel  []string
	conv func(vals []any) (any, error)
}

func converter(pgType, col string) columnConv {
	q := `"` + col + `"`
	one := func(f func(v any) (any, error)) columnConv {
		return columnConv{sel: []string{q}, conv: func(vals []any) (any, error) { return f(vals[0]) }}
	}
	switch pgType {
	case "timestamp with time zone":
		return one(func(v any) (any, error) {
			if v == nil {
				return nil, nil
			}
			n, ok := v.(int64)
			if !ok {
				return nil, fmt.Errorf("column %s: %T, want a time in unix microseconds", col, v)
			}
			return fromMicros(n), nil
		})
	case "uuid":
		return one(func(v any) (any, error) {
			if v == nil {
				return nil, nil
			}
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("column %s: %T, want a uuid", col, v)
			}
			return uuid.Parse(s)
		})
	case "boolean":
		return one(func(v any) (any, error) {
			n, ok := v.(int64)
			if !ok {
				return nil, fmt.Errorf("column %s: %T, want 0 or 1", col, v)
			}
			return n != 0, nil
		})
	case "ARRAY": // tokens.namespaces, JSON here
		return one(func(v any) (any, error) {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("column %s: %T, want a JSON array", col, v)
			}
			out := []string{}
			return out, json.Unmarshal([]byte(s), &out)
		})
	case "bytea":
		// An empty blob and NULL may both come back nil: a second
		// expression tells them apart (refs is NOT NULL and often empty).
		return columnConv{sel: []string{q, q + ` IS NULL`}, conv: func(vals []any) (any, error) {
			if isNull, _ := vals[1].(int64); isNull != 0 {
				return nil, nil
			}
			switch b := vals[0].(type) {
			case nil:
				return []byte{}, nil
			case []byte:
				if b == nil { // the driver's empty blob
					return []byte{}, nil
				}
				return b, nil
			}
			return nil, fmt.Errorf("column %s: %T, want a blob", col, vals[0])
		}}
	}
	return one(func(v any) (any, error) { return v, nil })
}

// rowSource feeds SQLite rows to COPY.
type rowSource struct {
	rows  *sql.Rows
	convs []columnConv
	vals  []any
	err   error
}

func (r *rowSource) Next() bool {
	if r.err != nil || !r.rows.Next() {
		return false
	}
	n := 0
	for _, c := range r.convs {
		n += len(c.sel)
	}
	raw := make([]any, n)
	ptrs := make([]any, n)
	for i := range raw {
		ptrs[i] = &raw[i]
	}
	if err := r.rows.Scan(ptrs...); err != nil {
		r.err = err
		return false
	}
	vals := make([]any, len(r.convs))
	for i, c := range r.convs {
		v, err := c.conv(raw[:len(c.sel)])
		if err != nil {
			r.err = err
			return false
		}
		raw = raw[len(c.sel):]
		vals[i] = v
	}
	r.vals = vals
	return true
}

func (r *rowSource) Values() ([]any, error) { return r.vals, nil }

func (r *rowSource) Err() error {
	if r.err != nil {
		return r.err
	}
	return r.rows.Err()
}
