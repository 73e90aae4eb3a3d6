/* The program bench/pgo-loop optimises: SQLite (the amalgamation the libsqlite3-sys crate
 * ships) running an OLTP-and-reporting mix on an in-memory database, the way an
 * application embeds it: many small statements, each one parsed, planned and run.
 *
 * Each round, on a fresh in-memory database:
 *   - creates three tables (customers, items, orders) and fills them with generated rows
 *     through prepared INSERTs inside transactions;
 *   - creates secondary indexes;
 *   - runs point lookups by primary key and by index (prepared, rebound per lookup);
 *   - runs ad-hoc queries built as SQL text (sqlite3_prepare each time: the tokenizer,
 *     parser, name resolution and the query planner stay hot, as in an application that
 *     does not cache statements): ranges, joins, GROUP BY, ORDER BY ... LIMIT, LIKE,
 *     subqueries, CASE, string functions;
 *   - updates and deletes a share of the rows, then checks the totals.
 * So the VDBE, the b-tree, the pager cache, the expression evaluator, sorting, the parser
 * and the code generator are all hot at once: a large, branchy instruction footprint.
 *
 * usage: sqlbench ROUNDS ROWS   (prints a checksum of every result it read) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sqlite3.h"

static unsigned long long rng;
static unsigned next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)rng;
}

static unsigned long long sum;

static void die(sqlite3 *db, const char *what) {
    fprintf(stderr, "sqlbench: %s: %s\n", what, sqlite3_errmsg(db));
    exit(1);
}

static void fold_text(const unsigned char *s) {
    if (!s) return;
    for (; *s; s++) sum = sum * 31 + *s;
}

/* Runs one SQL text to completion and folds every column of every row into the sum. */
static void query(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) die(db, sql);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int n = sqlite3_column_count(st);
        for (int i = 0; i < n; i++) {
            switch (sqlite3_column_type(st, i)) {
            case SQLITE_INTEGER: sum = sum * 31 + (unsigned long long)sqlite3_column_int64(st, i); break;
            case SQLITE_FLOAT: sum = sum * 31 + (unsigned long long)(sqlite3_column_double(st, i) * 100); break;
            case SQLITE_TEXT: fold_text(sqlite3_column_text(st, i)); break;
            default: sum = sum * 31 + 7; break;
            }
        }
    }
    if (rc != SQLITE_DONE) die(db, sql);
    sqlite3_finalize(st);
}

static void exec(sqlite3 *db, const char *sql) {
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) die(db, sql);
}

static const char *cities[] = {"Berlin", "Lisbon", "Osaka", "Quito", "Nairobi", "Oslo",
                               "Lima", "Perth", "Tunis", "Hanoi", "Denver", "Tallinn"};
static const char *words[] = {"branch", "record", "profile", "kernel", "guest", "compiler",
                              "optimise", "function", "register", "sample", "buffer",
                              "latency", "socket", "thread", "vector", "cache"};
#define NCITIES (sizeof cities / sizeof *cities)
#define NWORDS (sizeof words / sizeof *words)

static void fill(sqlite3 *db, int rows) {
    exec(db, "CREATE TABLE customer(id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT,"
             " since INTEGER, credit REAL)");
    exec(db, "CREATE TABLE item(id INTEGER PRIMARY KEY, title TEXT, price REAL, stock INTEGER,"
             " category INTEGER)");
    exec(db, "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customer,"
             " item INTEGER REFERENCES item, qty INTEGER, day INTEGER, note TEXT)");
    sqlite3_stmt *c, *i, *o;
    if (sqlite3_prepare_v2(db, "INSERT INTO customer VALUES(?1, ?2, ?3, ?4, ?5)", -1, &c, NULL) ||
        sqlite3_prepare_v2(db, "INSERT INTO item VALUES(?1, ?2, ?3, ?4, ?5)", -1, &i, NULL) ||
        sqlite3_prepare_v2(db, "INSERT INTO orders VALUES(NULL, ?1, ?2, ?3, ?4, ?5)", -1, &o, NULL))
        die(db, "prepare insert");
    char text[96];
    int customers = rows / 8 + 1, items = rows / 16 + 1;
    exec(db, "BEGIN");
    for (int k = 1; k <= customers; k++) {
        snprintf(text, sizeof text, "%s %s-%u", words[next() % NWORDS], words[next() % NWORDS],
                 next() % 10000);
        sqlite3_bind_int(c, 1, k);
        sqlite3_bind_text(c, 2, text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(c, 3, cities[next() % NCITIES], -1, SQLITE_STATIC);
        sqlite3_bind_int(c, 4, 1990 + (int)(next() % 35));
        sqlite3_bind_double(c, 5, (next() % 100000) / 10.0);
        if (sqlite3_step(c) != SQLITE_DONE) die(db, "insert customer");
        sqlite3_reset(c);
    }
    for (int k = 1; k <= items; k++) {
        snprintf(text, sizeof text, "%s %s %s", words[next() % NWORDS], words[next() % NWORDS],
                 words[next() % NWORDS]);
        sqlite3_bind_int(i, 1, k);
        sqlite3_bind_text(i, 2, text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(i, 3, 1 + (next() % 50000) / 100.0);
        sqlite3_bind_int(i, 4, (int)(next() % 500));
        sqlite3_bind_int(i, 5, (int)(next() % 24));
        if (sqlite3_step(i) != SQLITE_DONE) die(db, "insert item");
        sqlite3_reset(i);
    }
    exec(db, "COMMIT");
    /* Orders in many small transactions, as an application commits them. */
    for (int k = 0; k < rows; k++) {
        if (k % 64 == 0) exec(db, "BEGIN");
        sqlite3_bind_int(o, 1, 1 + (int)(next() % (unsigned)customers));
        sqlite3_bind_int(o, 2, 1 + (int)(next() % (unsigned)items));
        sqlite3_bind_int(o, 3, 1 + (int)(next() % 9));
        sqlite3_bind_int(o, 4, (int)(next() % 365));
        if (next() % 4 == 0) {
            snprintf(text, sizeof text, "deliver to %s, %s", cities[next() % NCITIES],
                     words[next() % NWORDS]);
            sqlite3_bind_text(o, 5, text, -1, SQLITE_TRANSIENT);
        } else {
            sqlite3_bind_null(o, 5);
        }
        if (sqlite3_step(o) != SQLITE_DONE) die(db, "insert order");
        sqlite3_reset(o);
        if (k % 64 == 63 || k == rows - 1) exec(db, "COMMIT");
    }
    sqlite3_finalize(c);
    sqlite3_finalize(i);
    sqlite3_finalize(o);
    exec(db, "CREATE INDEX orders_customer ON orders(customer, day)");
    exec(db, "CREATE INDEX orders_item ON orders(item)");
    exec(db, "CREATE INDEX customer_city ON customer(city, since)");
    exec(db, "CREATE INDEX item_category ON item(category, price)");
    exec(db, "ANALYZE");
}

static void lookups(sqlite3 *db, int rows) {
    sqlite3_stmt *by_id, *by_customer;
    if (sqlite3_prepare_v2(db, "SELECT name, city, credit FROM customer WHERE id = ?1", -1,
                           &by_id, NULL) ||
        sqlite3_prepare_v2(db,
                           "SELECT o.day, o.qty, i.title, i.price FROM orders o"
                           " JOIN item i ON i.id = o.item WHERE o.customer = ?1"
                           " ORDER BY o.day DESC LIMIT 5",
                           -1, &by_customer, NULL))
        die(db, "prepare lookup");
    int customers = rows / 8 + 1;
    for (int k = 0; k < rows / 2; k++) {
        sqlite3_stmt *st = (k & 1) ? by_customer : by_id;
        sqlite3_bind_int(st, 1, 1 + (int)(next() % (unsigned)customers));
        while (sqlite3_step(st) == SQLITE_ROW) {
            sum = sum * 31 + (unsigned long long)sqlite3_column_int64(st, 0);
            fold_text(sqlite3_column_text(st, 1));
        }
        sqlite3_reset(st);
    }
    sqlite3_finalize(by_id);
    sqlite3_finalize(by_customer);
}

/* Ad-hoc SQL text, prepared every time. */
static void reports(sqlite3 *db, int rows) {
    char sql[512];
    int customers = rows / 8 + 1;
    for (int k = 0; k < rows / 40; k++) {
        unsigned a = next() % (unsigned)customers, d = next() % 300;
        switch (k % 10) {
        case 0:
            snprintf(sql, sizeof sql,
                     "SELECT c.city, count(*), sum(o.qty * i.price), avg(o.qty) FROM orders o"
                     " JOIN customer c ON c.id = o.customer JOIN item i ON i.id = o.item"
                     " WHERE o.day BETWEEN %u AND %u GROUP BY c.city ORDER BY 3 DESC",
                     d, d + 30);
            break;
        case 1:
            snprintf(sql, sizeof sql,
                     "SELECT name, credit FROM customer WHERE city = '%s' AND since > %u"
                     " ORDER BY credit DESC, name LIMIT 10",
                     cities[next() % NCITIES], 1990 + d % 30);
            break;
        case 2:
            snprintf(sql, sizeof sql,
                     "SELECT i.category, count(DISTINCT o.customer), max(i.price) FROM item i"
                     " JOIN orders o ON o.item = i.id WHERE i.category IN (%u, %u, %u)"
                     " GROUP BY i.category",
                     d % 24, (d + 5) % 24, (d + 11) % 24);
            break;
        case 3:
            snprintf(sql, sizeof sql,
                     "SELECT title, price FROM item WHERE title LIKE '%%%s%%' AND stock < %u"
                     " ORDER BY price LIMIT 8",
                     words[next() % NWORDS], 100 + d);
            break;
        case 4:
            snprintf(sql, sizeof sql,
                     "SELECT customer, sum(qty) AS n FROM orders WHERE customer BETWEEN %u AND %u"
                     " GROUP BY customer HAVING n > 3 ORDER BY n DESC, customer",
                     a, a + 200);
            break;
        case 5:
            snprintf(sql, sizeof sql,
                     "SELECT upper(substr(name, 1, 6)) || '-' || length(name), CASE WHEN credit > 5000"
                     " THEN 'gold' WHEN credit > 1000 THEN 'silver' ELSE 'none' END FROM customer"
                     " WHERE id IN (SELECT customer FROM orders WHERE day = %u) ORDER BY 1",
                     d);
            break;
        case 6:
            snprintf(sql, sizeof sql,
                     "SELECT count(*), total(qty), min(day), max(day) FROM orders"
                     " WHERE note IS NOT NULL AND note LIKE '%%%s%%'",
                     cities[next() % NCITIES]);
            break;
        case 7:
            snprintf(sql, sizeof sql,
                     "SELECT c.name, (SELECT count(*) FROM orders o WHERE o.customer = c.id)"
                     " FROM customer c WHERE c.id BETWEEN %u AND %u ORDER BY 2 DESC, 1 LIMIT 5",
                     a, a + 50);
            break;
        case 8:
            snprintf(sql, sizeof sql,
                     "SELECT day %% 7 AS wd, count(*), round(avg(qty), 2) FROM orders"
                     " WHERE item %% %u = 0 GROUP BY wd ORDER BY wd",
                     2 + d % 9);
            break;
        default:
            snprintf(sql, sizeof sql,
                     "SELECT city, group_concat(DISTINCT since) FROM (SELECT city, since FROM"
                     " customer WHERE credit BETWEEN %u AND %u ORDER BY since) GROUP BY city",
                     d * 20, d * 20 + 900);
            break;
        }
        query(db, sql);
    }
}

static void churn(sqlite3 *db, int rows) {
    char sql[256];
    exec(db, "BEGIN");
    for (int k = 0; k < rows / 50; k++) {
        unsigned a = next() % (unsigned)(rows / 8 + 1);
        snprintf(sql, sizeof sql, "UPDATE customer SET credit = credit * 1.01 + %u WHERE id = %u",
                 next() % 50, a);
        exec(db, sql);
        snprintf(sql, sizeof sql, "UPDATE item SET stock = stock - 1 WHERE id = %u AND stock > 0",
                 next() % (unsigned)(rows / 16 + 1));
        exec(db, sql);
        snprintf(sql, sizeof sql, "DELETE FROM orders WHERE customer = %u AND day < %u", a,
                 next() % 60);
        exec(db, sql);
    }
    exec(db, "COMMIT");
    query(db, "SELECT count(*), sum(qty), total(credit) FROM orders JOIN customer"
              " ON customer.id = orders.customer");
    query(db, "PRAGMA integrity_check");
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    int rows = argc > 2 ? atoi(argv[2]) : 20000;
    if (rounds < 1 || rows < 100) {
        fprintf(stderr, "usage: sqlbench ROUNDS ROWS (ROWS >= 100)\n");
        return 2;
    }
    for (int r = 0; r < rounds; r++) {
        rng = 88172645463325252ull + (unsigned long long)r;
        sqlite3 *db;
        if (sqlite3_open(":memory:", &db) != SQLITE_OK) die(db, "open");
        fill(db, rows);
        lookups(db, rows);
        reports(db, rows);
        churn(db, rows);
        sqlite3_close(db);
    }
    printf("%016llx\n", sum);
    return 0;
}
