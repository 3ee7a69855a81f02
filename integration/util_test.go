package integration

import (
	"errors"
	"os"
	"syscall"
)

const sighup = syscall.SIGHUP

// readDirNames lists a directory; a missing directory is empty.
func readDirNames(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}
