package main

import (
	"fmt"

	"github.com/gogo/protobuf/proto"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "manage configs",
		Subcommands: []*cli.Command{
			{
				Name:        "create",
				Usage:       "create a config",
				ArgsUsage:   "NAME",
				Description: "The data comes from -f FILE, or from standard input with -f - (or when -f is not given and input is not a terminal).",
				Flags:       dataFlags("config"),
				Action:      configCreate,
			},
			{Name: "ls", Usage: "list configs", Flags: listFlags(), Action: configList},
			{Name: "inspect", Usage: "print configs as JSON", ArgsUsage: "CONFIG...", Action: configInspect},
			{Name: "rm", Aliases: []string{"remove"}, Usage: "remove configs", ArgsUsage: "CONFIG...", Action: configRemove},
		},
	}
}

func configCreate(c *cli.Context) error {
	ann, err := newObjectAnnotations(c, "config")
	if err != nil {
		return err
	}
	data, err := readData(c, "config")
	if err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.CreateConfig(ctx, &api.CreateConfigRequest{Spec: &api.ConfigSpec{Annotations: ann, Data: data}})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, resp.Config.ID)
		return nil
	})
}

func configList(c *cli.Context) error {
	l, err := newLister(c)
	if err != nil {
		return err
	}
	if err := noArgs(c); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.ListConfigs(ctx, &api.ListConfigsRequest{})
		if err != nil {
			return err
		}
		return printNamedObjects(c, l, resp.Configs)
	})
}

func configInspect(c *cli.Context) error {
	if err := minArgs(c, 1, "CONFIG..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return inspectEach(c, func(ref string) (proto.Message, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			resp, err := cl.GetConfig(ctx, &api.GetConfigRequest{ConfigID: ref})
			if err != nil {
				return nil, cl.explain(err)
			}
			return resp.Config, nil
		})
	})
}

func configRemove(c *cli.Context) error {
	if err := minArgs(c, 1, "CONFIG..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return forEach(c, func(ref string) (string, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			if _, err := cl.RemoveConfig(ctx, &api.RemoveConfigRequest{ConfigID: ref}); err != nil {
				return "", cl.explain(err)
			}
			return ref, nil
		})
	})
}
