package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// errStackNotImplemented is what every stack command answers for now.
var errStackNotImplemented = errors.New("stack is not implemented yet")

func stackCommand() *cli.Command {
	notYet := func(*cli.Context) error { return errStackNotImplemented }
	return &cli.Command{
		Name:  "stack",
		Usage: "deploy groups of services from a compose file (not available yet)",
		Subcommands: []*cli.Command{
			{
				Name:      "deploy",
				Usage:     "deploy or update a stack",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "compose-file", Aliases: []string{"c"}, Usage: "`COMPOSE.yml` to deploy"},
				},
				Action: notYet,
			},
			{Name: "ls", Usage: "list stacks", Flags: listFlags(), Action: notYet},
			{Name: "ps", Usage: "list the tasks of a stack", ArgsUsage: "NAME", Flags: listFlags(), Action: notYet},
			{Name: "services", Usage: "list the services of a stack", ArgsUsage: "NAME", Flags: listFlags(), Action: notYet},
			{Name: "rm", Aliases: []string{"remove"}, Usage: "remove a stack", ArgsUsage: "NAME", Action: notYet},
		},
	}
}
