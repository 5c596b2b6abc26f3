package main

import (
	_ "github.com/jackc/pgx/v5"
	_ "github.com/spf13/cobra"
	_ "go.yaml.in/yaml/v3"
	_ "modernc.org/sqlite"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "go.etcd.io/etcd/server/v3/embed"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.etcd.io/etcd/client/v3/concurrency"
)

func main() {}
