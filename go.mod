module github.com/cachelun/cachelun

go 1.26.8
