"""Runtime functions shared by the two trainers (classification/ and train_net.py); the model does
not use them."""
