// Command cadence-sql-tool: Cadence's SQL schema tool with the Postgres plugin linked in.
package main

import (
	"os"

	"github.com/uber/cadence/tools/common/commoncli"
	"github.com/uber/cadence/tools/sql"

	// The plugin registers itself in init(); the tool finds it by name (--plugin postgres).
	_ "github.com/uber/cadence/common/persistence/sql/sqlplugin/postgres"
)

func main() {
	commoncli.ExitHandler(sql.RunTool(os.Args))
}
