// Command cadence: Cadence's command-line client (domain registration, workflows).
package main

import (
	"os"

	"go.uber.org/zap"

	"github.com/uber/cadence/tools/cli"
	"github.com/uber/cadence/tools/common/commoncli"
)

func main() {
	logger, err := zap.NewDevelopment()
	if err != nil {
		panic(err)
	}
	commoncli.ExitHandler(cli.NewCliApp(cli.NewClientFactory(logger)).Run(os.Args))
}
