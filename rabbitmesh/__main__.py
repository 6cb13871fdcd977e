from rabbitmesh.cli import main

main()
