from iotdps.cli.main import main

main()
