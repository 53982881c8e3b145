import sys

from kvm.main import main

sys.exit(main())
