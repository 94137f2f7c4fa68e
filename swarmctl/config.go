package main

import (
	"fmt"
	"sort"
	"time"

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
		configs := resp.Configs
		sort.Slice(configs, func(i, j int) bool {
			if a, b := configs[i].Spec.Annotations.Name, configs[j].Spec.Annotations.Name; a != b {
				return a < b
			}
			return configs[i].ID < configs[j].ID
		})
		now := time.Now()
		objs := make([]proto.Message, len(configs))
		ids := make([]string, len(configs))
		rows := make([][]string, len(configs))
		for i, s := range configs {
			objs[i], ids[i] = s, s.ID
			rows[i] = []string{s.ID, s.Spec.Annotations.Name, ago(s.Meta.CreatedAt, now), ago(s.Meta.UpdatedAt, now)}
		}
		return l.print(c.App.Writer, objs, ids, []string{"ID", "NAME", "CREATED", "UPDATED"}, rows)
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
