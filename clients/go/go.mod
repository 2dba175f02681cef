module github.com/herald/herald-go

go 1.19
