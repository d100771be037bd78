import KilnCLI

await KilnCommand.start()
