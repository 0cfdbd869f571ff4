// Command ingest-folder ingests a folder of .txt files into Sluice, watches until they are
// indexed, and searches them.
//
//	go run ./examples/ingest-folder ./notes -query "what moves the tides"
//
// It connects to the local stack deploy/dev/up starts (127.0.0.1:50051, tenant demo,
// certificates in .sluice/dev/tls); -target, -certs and -tenant point it elsewhere. Each file
// becomes one document: its id the file's path in the folder, its title the first line, its
// text the whole file. It exits 1 if any document fails to index.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	sluice "sluice/sdk/go"
)

func main() { os.Exit(run()) }

func run() int {
	flags := flag.NewFlagSet("ingest-folder", flag.ExitOnError)
	flags.Usage = func() {
		fmt.Fprintln(flags.Output(), "usage: ingest-folder FOLDER [flags]")
		flags.PrintDefaults()
	}
	query := flags.String("query", "", "what to search for (default: the first file's title)")
	topK := flags.Int("top-k", 3, "how many hits to print")
	target := flags.String("target", "127.0.0.1:50051", "the gateway")
	certs := flags.String("certs", ".sluice/dev/tls", "the certificates, as sluice-admin cert client writes them")
	tenant := flags.String("tenant", "demo", "the tenant whose certificate to use")
	timeout := flags.Duration("timeout", 300*time.Second, "how long to wait for indexing")
	// The folder may come before the flags or after them.
	args := os.Args[1:]
	var folder string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		folder, args = args[0], args[1:]
	}
	_ = flags.Parse(args)
	if folder == "" && flags.NArg() > 0 {
		folder = flags.Arg(0)
	}
	if folder == "" {
		flags.Usage()
		return 2
	}

	documents, err := read(folder)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	client, err := sluice.FromDirectory(*target, *certs, *tenant, "")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer client.Close()
	ctx := context.Background()

	accepted, err := client.IngestMany(ctx, documents)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingesting:", err)
		return 1
	}
	fmt.Printf("accepted %d documents; watching until they are indexed\n", len(accepted))
	ids := make([]string, len(accepted))
	for i, a := range accepted {
		ids[i] = a.ID
	}
	watchCtx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	watch := client.Watch(watchCtx, sluice.WatchOptions{IngestionIDs: ids})
	failed := 0
	for watch.Next() {
		ingestion := watch.Event().Ingestion
		detail := ""
		switch ingestion.State {
		case sluice.StateIndexed:
			detail = fmt.Sprintf("%d chunk(s)", ingestion.ChunkCount)
		case sluice.StateFailed:
			detail = ingestion.FailureReason
			failed++
		}
		fmt.Printf("  %-30s %-8s %s\n", ingestion.DocumentID, ingestion.State, detail)
	}
	if err := watch.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "watching:", err)
		return 1
	}
	fmt.Printf("indexed %d of %d\n", len(accepted)-failed, len(accepted))

	if *query == "" {
		*query = documents[0].Fields.(map[string]any)["title"].(string)
	}
	fmt.Printf("searching: %q\n", *query)
	hits, err := client.Search(ctx, *query, *topK, map[string]string{"folder": filepath.Base(folder)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "searching:", err)
		return 1
	}
	for _, hit := range hits {
		text := strings.Join(strings.Fields(hit.Text), " ")
		if r := []rune(text); len(r) > 70 {
			text = string(r[:70])
		}
		fmt.Printf("  %.3f  %-30s #%d  %s\n", hit.Score, hit.DocumentID, hit.ChunkIndex, text)
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// read makes a document of each .txt file under folder, in path order.
func read(folder string) ([]sluice.Document, error) {
	var paths []string
	err := filepath.WalkDir(folder, func(path string, entry fs.DirEntry, err error) error {
		if err == nil && entry.Type().IsRegular() && strings.HasSuffix(path, ".txt") {
			paths = append(paths, path)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no .txt files in %s", folder)
	}
	sort.Strings(paths)
	var documents []sluice.Document
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		text := string(data)
		name, _ := filepath.Rel(folder, path)
		name = filepath.ToSlash(name)
		title := strings.TrimSuffix(filepath.Base(path), ".txt")
		if trimmed := strings.TrimSpace(text); trimmed != "" {
			title, _, _ = strings.Cut(trimmed, "\n")
			if r := []rune(title); len(r) > 200 {
				title = string(r[:200])
			}
		}
		documents = append(documents, sluice.Document{
			ID:         name,
			Fields:     map[string]any{"title": title, "text": text, "source": name},
			Attributes: map[string]string{"folder": filepath.Base(folder)},
		})
	}
	return documents, nil
}
